//! `GET /history?channel=NAME[&since=ID][&limit=N]`: a channel's kept
//! messages as JSON, oldest first:
//! `{"epoch":"...","offset":N,"messages":[{"id":"e:1","data":"..."}]}` (a
//! payload that is not UTF-8 as `"data_base64"`). `since` of another epoch
//! counts as none: the answer's epoch tells the client its position is gone.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde::Serialize;

use super::query::pairs;
use super::{Credentials, Web, error};
use crate::auth::Action;
use crate::broker::Broker;
use crate::history::Position;
use crate::protocol::command::valid_name;
use crate::protocol::reply::Error;

#[derive(Serialize)]
struct Answer {
    epoch: String,
    offset: u64,
    messages: Vec<Message>,
}

#[derive(Serialize)]
struct Message {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

/// The request's parameters.
struct Query {
    channel: Bytes,
    since: Option<Position>,
    limit: usize,
    token: Option<Bytes>,
}

fn parse(query: Option<&str>) -> Result<Query, Error> {
    let (mut channel, mut since, mut limit, mut token) = (None, None, usize::MAX, None);
    for (key, value) in pairs(query) {
        match key {
            "channel" if channel.is_none() => {
                valid_name(&value)?;
                channel = Some(value);
            }
            "since" => since = Position::parse(&value)?,
            "limit" => {
                let text = std::str::from_utf8(&value).map_err(|_| Error::InvalidParameter)?;
                limit = text.parse().map_err(|_| Error::InvalidParameter)?;
            }
            "token" => token = Some(value),
            _ => return Err(Error::InvalidParameter),
        }
    }
    let channel = channel.ok_or(Error::Arity("history"))?;
    Ok(Query { channel, since, limit, token })
}

pub async fn history<B: Broker>(
    State(web): State<Web<B>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = match parse(query.as_deref()) {
        Ok(query) => query,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let credentials = match Credentials::check(&web.config, &headers, query.token.as_deref()) {
        Ok(credentials) => credentials,
        Err(refusal) => return *refusal,
    };
    if !credentials.permissions.allows(Action::Subscribe, &query.channel) {
        return credentials.forbidden(&web.config);
    }
    let (position, kept) =
        match web.broker.history(&query.channel, query.since.as_ref(), query.limit).await {
            Ok(Some(kept)) => kept,
            Ok(None) => return error(StatusCode::NOT_FOUND, Error::NoHistory),
            Err(reason) => return error(StatusCode::SERVICE_UNAVAILABLE, reason),
        };
    let messages = kept
        .into_iter()
        .map(|(at, payload)| {
            let id = String::from_utf8_lossy(&at.id()).into_owned();
            match String::from_utf8(payload.to_vec()) {
                Ok(text) => Message { id, data: Some(text), data_base64: None },
                Err(_) => Message {
                    id,
                    data: None,
                    data_base64: Some(base64::engine::general_purpose::STANDARD.encode(&payload)),
                },
            }
        })
        .collect();
    let answer = Answer {
        epoch: String::from_utf8_lossy(&position.epoch).into_owned(),
        offset: position.offset,
        messages,
    };
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
