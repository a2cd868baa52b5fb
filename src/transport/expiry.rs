//! The end of a token's life, as a timer the connection's own task polls
//! beside its other waits: a timer entry, not a task, and boxed so that
//! connections without a token carry only an empty `Option`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

/// A timer that fires when a token expires; idle without one.
#[derive(Default)]
pub struct Expiry {
    armed: Option<(SystemTime, Pin<Box<tokio::time::Sleep>>)>,
}

impl Expiry {
    /// Re-arms the timer when the expiry changed (a new token).
    pub fn follow(&mut self, expires: Option<SystemTime>) {
        if self.armed.as_ref().map(|(at, _)| *at) == expires {
            return;
        }
        self.armed = expires.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            (at, Box::pin(tokio::time::sleep(left)))
        });
    }

    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.armed {
            Some((_, sleep)) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}
