//! `POST /publish?channel=NAME[&channel=...]`: the request body, byte for
//! byte, published to each channel, through the same permission check and
//! broker as the line protocol's `PUBLISH`.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::query::Names;
use super::{Credentials, Web, error};
use crate::auth::Action;
use crate::broker::{Broker, Waiter};
use crate::metrics;
use crate::outbox::Flush;
use crate::protocol::reply::Error;

pub async fn publish<B: Broker>(
    State(web): State<Web<B>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let names = match Names::parse(query.as_deref(), false) {
        Ok(names) if names.channels.is_empty() => {
            return error(StatusCode::BAD_REQUEST, Error::Arity("publish"));
        }
        Ok(names) => names,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let credentials = match Credentials::check(&web.config, &headers, names.token.as_deref()) {
        Ok(credentials) => credentials,
        Err(refusal) => return *refusal,
    };
    let channels = names.channels;
    if !channels.iter().all(|channel| credentials.permissions.allows(Action::Publish, channel)) {
        return credentials.forbidden(&web.config);
    }
    let Ok(payload) = axum::body::to_bytes(body, web.config.max_payload).await else {
        // Over the limit, or the client went away mid-body (then nobody reads this).
        return error(StatusCode::PAYLOAD_TOO_LARGE, Error::PayloadTooLarge);
    };
    let mut flush = Flush::default();
    for channel in &channels {
        let published =
            web.broker.publish(channel.clone(), payload.clone(), &mut flush, Waiter::Caller).await;
        flush.run();
        if let Err(reason) = published.outcome().await {
            let status = match reason {
                Error::BackendUnavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            return error(status, reason);
        }
    }
    metrics::get().http_publishes.inc();
    let body = format!("{{\"published\":{}}}\n", channels.len());
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}
