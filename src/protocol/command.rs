//! Parsing one command line into a [`Command`]. No I/O: unit-tested on bytes.

use super::Version;
use super::reply::Error;
use crate::history::Position;
use bytes::Bytes;

/// Longest channel name or pattern, in bytes.
pub const MAX_NAME: usize = 256;

/// A command from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SUBSCRIBE [ch ...]`; no channel means the server's default channel.
    Subscribe(Vec<Bytes>),
    /// `UNSUBSCRIBE [ch ...]`; no channel means the server's default channel.
    Unsubscribe(Vec<Bytes>),
    /// `PSUBSCRIBE pat [pat ...]`.
    PSubscribe(Vec<Bytes>),
    /// `PUNSUBSCRIBE pat [pat ...]`.
    PUnsubscribe(Vec<Bytes>),
    /// `PUBLISH ch payload`: the payload is the rest of the line, verbatim.
    Publish { channel: Bytes, payload: Bytes },
    /// `PING [text]`.
    Ping(Bytes),
    /// `HELLO 1|2`.
    Hello(Hello),
    /// `AUTH token`.
    Auth(Bytes),
    /// `RESUME ch id`: `since` is `None` for `-`.
    Resume { channel: Bytes, since: Option<Position> },
    /// `QUIT`.
    Quit,
    /// Anything else, the empty line included: the seed's `UNKNOWN COMMAND`.
    Unknown,
}

/// The version a `HELLO` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    Supported(Version),
    Unsupported,
}

impl Command {
    /// Parses one line (without its line terminator). A known command used
    /// wrongly is an `Error`: answered with `ERR <reason>`, the connection stays.
    pub fn parse(line: Bytes) -> Result<Command, Error> {
        let mut words = Words { line: &line, at: 0 };
        let Some(name) = words.next() else {
            return Ok(Command::Unknown);
        };
        let is = |expected: &str| name.eq_ignore_ascii_case(expected.as_bytes());
        let slice = |word: &[u8]| line.slice_ref(word);
        // Names are copied out: they outlive the line (in the subscription
        // tables), and a slice would pin the connection's whole read buffer.
        let names = |words: Words<'_>| -> Result<Vec<Bytes>, Error> {
            words.map(|word| valid_name(word).map(Bytes::copy_from_slice)).collect()
        };

        if is("subscribe") {
            Ok(Command::Subscribe(names(words)?))
        } else if is("unsubscribe") {
            Ok(Command::Unsubscribe(names(words)?))
        } else if is("psubscribe") || is("punsubscribe") {
            let patterns = names(words)?;
            match (patterns.is_empty(), is("psubscribe")) {
                (true, true) => Err(Error::Arity("psubscribe")),
                (true, false) => Err(Error::Arity("punsubscribe")),
                (false, true) => Ok(Command::PSubscribe(patterns)),
                (false, false) => Ok(Command::PUnsubscribe(patterns)),
            }
        } else if is("publish") {
            let channel = words.next().ok_or(Error::Arity("publish"))?;
            let channel = Bytes::copy_from_slice(valid_name(channel)?);
            Ok(Command::Publish { channel, payload: slice(words.rest()) })
        } else if is("ping") {
            Ok(Command::Ping(slice(words.rest_after_space())))
        } else if is("hello") {
            let version = words.next().ok_or(Error::Arity("hello"))?;
            if words.next().is_some() {
                return Err(Error::Arity("hello"));
            }
            Ok(Command::Hello(match version {
                b"1" => Hello::Supported(Version::V1),
                b"2" => Hello::Supported(Version::V2),
                b"3" => Hello::Supported(Version::V3),
                _ => Hello::Unsupported,
            }))
        } else if is("resume") {
            let (Some(channel), Some(id), None) = (words.next(), words.next(), words.next()) else {
                return Err(Error::Arity("resume"));
            };
            let channel = Bytes::copy_from_slice(valid_name(channel)?);
            let since = Position::parse(id)?;
            Ok(Command::Resume { channel, since })
        } else if is("auth") {
            let token = words.next().ok_or(Error::Arity("auth"))?;
            if words.next().is_some() {
                return Err(Error::Arity("auth"));
            }
            Ok(Command::Auth(slice(token)))
        } else if is("quit") {
            match words.next() {
                None => Ok(Command::Quit),
                Some(_) => Err(Error::Arity("quit")),
            }
        } else {
            Ok(Command::Unknown)
        }
    }
}

/// Checks the naming rules: 1 to 256 bytes, no white space, no control bytes.
/// Bytes above 0x7f are allowed: names are bytes, not text.
pub fn valid_name(name: &[u8]) -> Result<&[u8], Error> {
    let bad = |b: &u8| b.is_ascii_control() || b.is_ascii_whitespace();
    if name.is_empty() || name.len() > MAX_NAME || name.iter().any(bad) {
        return Err(Error::InvalidChannel);
    }
    Ok(name)
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Words of a line, separated by runs of spaces or tabs.
struct Words<'a> {
    line: &'a [u8],
    at: usize,
}

impl<'a> Words<'a> {
    /// What follows the single blank after the last word taken, verbatim: a
    /// payload may hold spaces, or be empty.
    fn rest(&self) -> &'a [u8] {
        let rest = &self.line[self.at..];
        match rest.first() {
            Some(&b) if is_blank(b) => &rest[1..],
            _ => rest,
        }
    }

    /// The rest of the line without its surrounding blanks (for `PING text`).
    fn rest_after_space(&self) -> &'a [u8] {
        self.line[self.at..].trim_ascii()
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let line = self.line;
        while self.at < line.len() && is_blank(line[self.at]) {
            self.at += 1;
        }
        let start = self.at;
        while self.at < line.len() && !is_blank(line[self.at]) {
            self.at += 1;
        }
        (self.at > start).then(|| &line[start..self.at])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &[u8]) -> Result<Command, Error> {
        Command::parse(Bytes::copy_from_slice(line))
    }

    fn names(list: &[&str]) -> Vec<Bytes> {
        list.iter().map(|n| Bytes::copy_from_slice(n.as_bytes())).collect()
    }

    #[test]
    fn seed_commands() {
        assert_eq!(parse(b"SUBSCRIBE"), Ok(Command::Subscribe(vec![])));
        assert_eq!(parse(b"subscribe"), Ok(Command::Subscribe(vec![])));
        assert_eq!(parse(b"UNSUBSCRIBE"), Ok(Command::Unsubscribe(vec![])));
        assert_eq!(parse(b"HELLO WORLD"), Ok(Command::Hello(Hello::Unsupported)));
        assert_eq!(parse(b"FOO"), Ok(Command::Unknown));
        assert_eq!(parse(b""), Ok(Command::Unknown));
        assert_eq!(parse(b" \t "), Ok(Command::Unknown));
    }

    #[test]
    fn words_and_blanks() {
        assert_eq!(parse(b"  SubScribe\ta   b\t "), Ok(Command::Subscribe(names(&["a", "b"]))));
        assert_eq!(parse(b"PSUBSCRIBE news.*"), Ok(Command::PSubscribe(names(&["news.*"]))));
        assert_eq!(parse(b"PUNSUBSCRIBE a b"), Ok(Command::PUnsubscribe(names(&["a", "b"]))));
    }

    #[test]
    fn publish_payload_is_the_rest_of_the_line() {
        let publish = |ch: &str, payload: &[u8]| {
            Ok(Command::Publish {
                channel: Bytes::copy_from_slice(ch.as_bytes()),
                payload: Bytes::copy_from_slice(payload),
            })
        };
        assert_eq!(parse(b"PUBLISH ch hello world "), publish("ch", b"hello world "));
        assert_eq!(parse(b"PUBLISH ch  two"), publish("ch", b" two"));
        assert_eq!(parse(b"PUBLISH ch"), publish("ch", b""));
        assert_eq!(parse(b"PUBLISH ch "), publish("ch", b""));
        assert_eq!(parse(b"publish  ch\t\xff\x00"), publish("ch", b"\xff\x00"));
        assert_eq!(parse(b"PUBLISH"), Err(Error::Arity("publish")));
    }

    #[test]
    fn ping_hello_quit() {
        assert_eq!(parse(b"PING"), Ok(Command::Ping(Bytes::new())));
        assert_eq!(parse(b"PING  hi there "), Ok(Command::Ping(Bytes::from("hi there"))));
        assert_eq!(parse(b"HELLO 2"), Ok(Command::Hello(Hello::Supported(Version::V2))));
        assert_eq!(parse(b"hello 1"), Ok(Command::Hello(Hello::Supported(Version::V1))));
        assert_eq!(parse(b"HELLO 4"), Ok(Command::Hello(Hello::Unsupported)));
        assert_eq!(parse(b"HELLO"), Err(Error::Arity("hello")));
        assert_eq!(parse(b"HELLO 2 x"), Err(Error::Arity("hello")));
        assert_eq!(parse(b"QUIT"), Ok(Command::Quit));
        assert_eq!(parse(b"QUIT now"), Err(Error::Arity("quit")));
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(parse(b"PSUBSCRIBE"), Err(Error::Arity("psubscribe")));
        assert_eq!(parse(b"PUNSUBSCRIBE"), Err(Error::Arity("punsubscribe")));
        let long = [b"SUBSCRIBE ".as_slice(), &[b'x'; 257]].concat();
        assert_eq!(parse(&long), Err(Error::InvalidChannel));
        assert!(parse(&long[..long.len() - 1]).is_ok(), "256 bytes is allowed");
        assert_eq!(parse(b"SUBSCRIBE ok bad\x01"), Err(Error::InvalidChannel));
        assert_eq!(parse(b"PUBLISH a\x7f x"), Err(Error::InvalidChannel));
        assert_eq!(
            parse(b"SUBSCRIBE caf\xc3\xa9 \xff"),
            Ok(Command::Subscribe(vec![Bytes::from("café"), Bytes::from_static(b"\xff")]))
        );
    }
}
