//! Query strings of `/ws`, `/sse` and `/publish`:
//! `channel=a&channel=b&pattern=p&token=t`.
//! Names are bytes, percent-decoded (and `+` read as a space, as forms send
//! it), so any channel a line client can name, a web client can too.

use bytes::Bytes;

use crate::protocol::command::valid_name;
use crate::protocol::reply::Error;

/// The `channel` and `pattern` parameters, in order, and a `token`; any
/// other parameter, or a name that breaks the naming rules, is an error.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub channels: Vec<Bytes>,
    pub patterns: Vec<Bytes>,
    pub token: Option<Bytes>,
    /// `last-event-id` (SSE: where a reconnecting stream resumes).
    pub last_event_id: Option<Bytes>,
}

impl Names {
    pub fn parse(query: Option<&str>, allow_patterns: bool) -> Result<Names, Error> {
        let mut names = Names::default();
        for (key, value) in pairs(query) {
            let list = match key {
                "token" => {
                    names.token = Some(value);
                    continue;
                }
                "last-event-id" if allow_patterns => {
                    names.last_event_id = Some(value);
                    continue;
                }
                "channel" => &mut names.channels,
                "pattern" if allow_patterns => &mut names.patterns,
                _ => return Err(Error::InvalidParameter),
            };
            valid_name(&value)?;
            list.push(value);
        }
        Ok(names)
    }

    /// Just the `token` parameter, ignoring the rest (for `/ws`).
    pub fn token(query: Option<&str>) -> Option<Bytes> {
        pairs(query).filter(|(key, _)| *key == "token").map(|(_, value)| value).last()
    }
}

/// A query string's parameters, in order: the key as sent, the value decoded.
pub fn pairs(query: Option<&str>) -> impl Iterator<Item = (&str, Bytes)> {
    query.unwrap_or("").split('&').filter(|pair| !pair.is_empty()).map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key, decode(value))
    })
}

/// A parameter's value: percent-decoded bytes, `+` as a space.
fn decode(value: &str) -> Bytes {
    let spaced = value.replace('+', " ");
    Bytes::from(percent_encoding::percent_decode_str(&spaced).collect::<Vec<u8>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        let names = Names::parse(Some("channel=a&pattern=n%2A&channel=%C3%A9t%C3%A9"), true);
        let expected = Names {
            channels: vec![Bytes::from("a"), Bytes::from("été")],
            patterns: vec![Bytes::from("n*")],
            token: None,
            last_event_id: None,
        };
        assert_eq!(names, Ok(expected));
        assert_eq!(Names::parse(None, true), Ok(Names::default()));
        assert_eq!(Names::parse(Some("channel=a%20b"), true), Err(Error::InvalidChannel));
        assert_eq!(Names::parse(Some("channel=a+b"), true), Err(Error::InvalidChannel));
        assert_eq!(Names::parse(Some("channel="), true), Err(Error::InvalidChannel));
        assert_eq!(Names::parse(Some("pattern=a"), false), Err(Error::InvalidParameter));
        assert_eq!(Names::parse(Some("chanel=a"), true), Err(Error::InvalidParameter));
    }
}
