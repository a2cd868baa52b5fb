//! Helpers for the history tests (both backends): ids, version 3 clients,
//! and an SSE stream as a browser's `EventSource` sees it.

use std::net::SocketAddr;

use super::Client;
use super::web::Sse;

/// `<epoch>:<offset>` split in two.
pub fn split(id: &str) -> (String, u64) {
    let (epoch, offset) = id.split_once(':').unwrap_or_else(|| panic!("not an id: {id}"));
    (epoch.to_string(), offset.parse().unwrap_or_else(|_| panic!("not an offset: {id}")))
}

/// A client that has sent `HELLO 3` and got its confirmation.
pub fn v3(addr: SocketAddr) -> Client {
    let mut client = Client::connect(addr);
    client.command("HELLO 3", "CONFIRMED");
    client
}

/// Sends `command`, expects `CONFIRMED <id>`: the id.
pub fn confirmed_at(client: &mut Client, command: &str) -> String {
    client.send(format!("{command}\r\n").as_bytes());
    let line = String::from_utf8(client.line()).expect("ASCII");
    line.strip_prefix("CONFIRMED ")
        .unwrap_or_else(|| panic!("{command}: not CONFIRMED <id>: {line}"))
        .to_string()
}

/// An SSE stream as a browser's `EventSource` sees it: the events that
/// carry data, and the last id received (the first event may be an id
/// alone, which fires nothing but sets it).
pub struct Stream {
    pub sse: Sse,
    pub id: String,
}

impl Stream {
    pub fn new(sse: Sse) -> Stream {
        assert_eq!(sse.status, 200, "{}", sse.error_body);
        Stream { sse, id: String::new() }
    }

    pub fn open(http: SocketAddr, query: &str) -> Stream {
        Stream::new(Sse::open(http, query))
    }

    /// Reconnects as `EventSource` does: the same query, and the last id.
    pub fn resume(http: SocketAddr, query: &str, id: &str) -> Stream {
        Stream::open(http, &format!("{query}&last-event-id={id}"))
    }

    /// The next event with data: its name (`message` without `event:`) and
    /// its data.
    pub fn next(&mut self) -> (String, String) {
        loop {
            let lines = self.sse.event().expect("an event");
            let mut name = "message".to_string();
            let mut data = None;
            for line in lines {
                if let Some(id) = line.strip_prefix("id: ") {
                    self.id = id.to_string();
                } else if let Some(event) = line.strip_prefix("event: ") {
                    name = event.to_string();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data = Some(value.to_string());
                }
            }
            if let Some(data) = data {
                return (name, data);
            }
        }
    }

    /// The next message's JSON.
    pub fn json(&mut self) -> serde_json::Value {
        let (name, data) = self.next();
        assert_eq!(name, "message", "{data}");
        serde_json::from_str(&data).expect("JSON")
    }

    /// The next messages' payloads.
    pub fn data(&mut self, count: usize) -> Vec<String> {
        (0..count).map(|_| self.json()["data"].as_str().expect("text").to_string()).collect()
    }

    /// The next message: (channel, id, data), `-` for what it lacks.
    pub fn message(&mut self) -> (String, String, String) {
        let json = self.json();
        let text = |key: &str| json[key].as_str().unwrap_or("-").to_string();
        (text("channel"), text("id"), text("data"))
    }

    /// The next event, which must be `reset`: the channels it names.
    pub fn reset(&mut self) -> Vec<String> {
        let (name, data) = self.next();
        assert_eq!(name, "reset", "{data}");
        let json: serde_json::Value = serde_json::from_str(&data).expect("JSON");
        json["channels"]
            .as_array()
            .expect("channels")
            .iter()
            .map(|c| c.as_str().expect("a name").to_string())
            .collect()
    }

    /// Reads the first event, which must be the stream's id alone.
    pub fn first_id(&mut self) {
        let lines = self.sse.event().expect("an event");
        assert!(lines.len() == 1 && lines[0].starts_with("id: "), "{lines:?}");
        self.id = lines[0]["id: ".len()..].to_string();
    }

    /// The last id's entries (its check taken off): one per channel.
    pub fn entries(&self) -> Vec<String> {
        let mut parts = self.id.split('.');
        let check = parts.next().expect("a check");
        assert!(check.len() == 8 && check.bytes().all(|b| b.is_ascii_hexdigit()), "{}", self.id);
        parts.map(str::to_string).collect()
    }
}
