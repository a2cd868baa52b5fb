//! WebSocket framing (RFC 6455) for the server side, without I/O.
//!
//! Outbound frames are encoded here, unmasked as the server's must be, into
//! one `Bytes` each, so a push is encoded once and the same frame is queued
//! to every WebSocket subscriber and written with the line protocol's
//! non-blocking `writev` path. Inbound frames are parsed with tungstenite's
//! frame header parser from a buffer that holds only what the client sent
//! (as [`LineReader`](super::codec::LineReader) does for lines): an idle
//! WebSocket keeps no read buffer.

use bytes::{BufMut, Bytes, BytesMut};
use std::io::Cursor;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::codec::ReadBuffer;

/// Close codes the server sends (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// `QUIT`, or the answer to the client's close.
    Normal = 1000,
    /// The server is shutting down.
    GoingAway = 1001,
    /// A frame that breaks RFC 6455.
    Protocol = 1002,
    /// A slow consumer.
    Policy = 1008,
    /// A message over `--max-line`.
    TooBig = 1009,
}

/// A text frame holding `text`, which must be UTF-8.
pub fn text(text: &[u8]) -> Bytes {
    debug_assert!(std::str::from_utf8(text).is_ok());
    frame(OpCode::Data(Data::Text), text)
}

/// A message holding `payload` as published: a text frame when it is UTF-8,
/// else a binary frame.
pub fn data(payload: &[u8]) -> Bytes {
    let kind = if std::str::from_utf8(payload).is_ok() { Data::Text } else { Data::Binary };
    frame(OpCode::Data(kind), payload)
}

/// The answer to a ping.
pub fn pong(payload: &[u8]) -> Bytes {
    frame(OpCode::Control(Control::Pong), payload)
}

/// A close frame with `code` and no reason.
pub fn close(code: CloseCode) -> Bytes {
    frame(OpCode::Control(Control::Close), &(code as u16).to_be_bytes())
}

/// One final, unmasked frame.
fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let first = 0x80 | u8::from(opcode);
    let mut out = BytesMut::with_capacity(10 + payload.len());
    out.put_u8(first);
    match payload.len() {
        len @ 0..=125 => out.put_u8(len as u8),
        len @ 126..=0xffff => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        len => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

/// What the client sent, frame by frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// A whole text or binary message: one command line, without a trailing
    /// CR/LF.
    Line(Bytes),
    /// A ping: answer with [`pong`].
    Ping(Bytes),
    /// A close frame: answer with [`close`] and end the connection.
    Close,
}

/// Why the client's frames cannot be read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A message longer than `--max-line`: close 1009.
    TooBig,
    /// A frame that breaks RFC 6455 (unmasked, reserved bits or opcodes, a
    /// stray continuation, a long or fragmented control frame): close 1002.
    Protocol,
}

impl Violation {
    pub fn close_code(self) -> CloseCode {
        match self {
            Violation::TooBig => CloseCode::TooBig,
            Violation::Protocol => CloseCode::Protocol,
        }
    }
}

/// Splits the client's byte stream into messages.
#[derive(Debug)]
pub struct Reader {
    buf: ReadBuffer,
    /// The fragments of a message begun and not finished (boxed: rare, and
    /// every idle connection would carry the room).
    fragments: Option<Box<BytesMut>>,
    max_message: usize,
}

impl Reader {
    /// `early`: bytes the HTTP server read past the upgrade request.
    pub fn new(max_message: usize, early: Bytes) -> Reader {
        Reader { buf: ReadBuffer::from(early), fragments: None, max_message }
    }

    /// Reads once with `read` (see [`ReadBuffer::read_with`]).
    pub fn read_with(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        self.buf.read_with(read)
    }

    /// The next complete message or control frame; `Ok(None)` until more
    /// bytes arrive.
    pub fn next_input(&mut self) -> Result<Option<Input>, Violation> {
        loop {
            let mut cursor = Cursor::new(self.buf.bytes());
            let Some((header, len)) =
                FrameHeader::parse(&mut cursor).map_err(|_| Violation::Protocol)?
            else {
                self.buf.shrink();
                return Ok(None);
            };
            let start = cursor.position() as usize;
            let is_control = matches!(header.opcode, OpCode::Control(_));
            if header.rsv1 || header.rsv2 || header.rsv3 || header.mask.is_none() {
                return Err(Violation::Protocol);
            }
            if is_control && (len > 125 || !header.is_final) {
                return Err(Violation::Protocol);
            }
            let so_far = self.fragments.as_ref().map_or(0, |f| f.len()) as u64;
            // A CRLF at the end of a command is not part of it: two bytes of slack.
            if !is_control && so_far + len > self.max_message as u64 + 2 {
                return Err(Violation::TooBig);
            }
            let len = len as usize;
            if self.buf.bytes().len() < start + len {
                self.buf.shrink();
                return Ok(None);
            }
            let mut payload = self.buf.take(start + len).split_off(start);
            if let Some(mask) = header.mask {
                unmask(&mut payload, mask);
            }
            match header.opcode {
                OpCode::Data(Data::Text | Data::Binary) => {
                    if self.fragments.is_some() {
                        return Err(Violation::Protocol);
                    }
                    if header.is_final {
                        return self.line(payload).map(Some);
                    }
                    self.fragments = Some(Box::new(payload));
                }
                OpCode::Data(Data::Continue) => {
                    let Some(fragments) = self.fragments.as_mut() else {
                        return Err(Violation::Protocol);
                    };
                    fragments.extend_from_slice(&payload);
                    if header.is_final {
                        let message = self.fragments.take().map(|f| *f).unwrap_or_default();
                        return self.line(message).map(Some);
                    }
                }
                OpCode::Control(Control::Ping) => return Ok(Some(Input::Ping(payload.freeze()))),
                OpCode::Control(Control::Pong) => {}
                OpCode::Control(Control::Close) => return Ok(Some(Input::Close)),
                OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                    return Err(Violation::Protocol);
                }
            }
        }
    }

    /// A whole message as a command line: a trailing CRLF, LF or CR is
    /// dropped. CR or LF elsewhere stays: a message is one command, so a
    /// payload published over WebSocket may hold line breaks.
    fn line(&self, mut message: BytesMut) -> Result<Input, Violation> {
        if message.last() == Some(&b'\n') {
            message.truncate(message.len() - 1);
        }
        if message.last() == Some(&b'\r') {
            message.truncate(message.len() - 1);
        }
        if message.len() > self.max_message {
            return Err(Violation::TooBig);
        }
        Ok(Input::Line(message.freeze()))
    }

    /// Bytes of memory the reader holds (for tests).
    pub fn capacity(&self) -> usize {
        self.buf.capacity() + self.fragments.as_ref().map_or(0, |f| f.capacity())
    }
}

/// Undoes the client's masking (RFC 6455 §5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (byte, key) in payload.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with a fixed key.
    fn client(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, k)| b ^ k));
        out
    }

    fn feed(reader: &mut Reader, bytes: &[u8]) {
        reader
            .read_with(|scratch| {
                scratch[..bytes.len()].copy_from_slice(bytes);
                Ok(bytes.len())
            })
            .expect("in memory");
    }

    fn all(reader: &mut Reader) -> Result<Vec<Input>, Violation> {
        let mut out = Vec::new();
        while let Some(input) = reader.next_input()? {
            out.push(input);
        }
        Ok(out)
    }

    #[test]
    fn encodes_server_frames() {
        assert_eq!(&text(b"CONFIRMED")[..], b"\x81\x09CONFIRMED");
        assert_eq!(&data(&[0xff])[..], b"\x82\x01\xff");
        assert_eq!(&close(CloseCode::Policy)[..], b"\x88\x02\x03\xf0");
        let long = data(&[b'a'; 300]);
        assert_eq!(&long[..4], b"\x81\x7e\x01\x2c");
        assert_eq!(long.len(), 304);
        let huge = data(&vec![b'a'; 70_000]);
        assert_eq!(&huge[..10], b"\x81\x7f\x00\x00\x00\x00\x00\x01\x11\x70");
    }

    #[test]
    fn reads_messages_split_at_every_byte() {
        let input = [
            client(1, true, b"SUBSCRIBE a\r\n"),
            client(9, true, b"hi"),
            client(2, false, b"PUB"),
            client(0, false, b"LISH a "),
            client(10, true, b""),
            client(0, true, &[b'x'; 200]),
            client(8, true, &[3, 232]),
        ]
        .concat();
        let mut expected_publish = b"PUBLISH a ".to_vec();
        expected_publish.extend_from_slice(&[b'x'; 200]);
        let expected = vec![
            Input::Line(Bytes::from("SUBSCRIBE a")),
            Input::Ping(Bytes::from("hi")),
            Input::Line(Bytes::from(expected_publish)),
            Input::Close,
        ];
        for split in 1..input.len() {
            let mut reader = Reader::new(1000, Bytes::copy_from_slice(&input[..split]));
            let mut got = all(&mut reader).expect("valid frames");
            feed(&mut reader, &input[split..]);
            got.extend(all(&mut reader).expect("valid frames"));
            assert_eq!(got, expected, "split at {split}");
        }
    }

    #[test]
    fn refuses_what_breaks_the_rules() {
        let unmasked = [0x81, 0x01, b'a'];
        let cases: [(Vec<u8>, Violation); 6] = [
            (unmasked.to_vec(), Violation::Protocol),
            (client(0, true, b"stray"), Violation::Protocol),
            (client(9, false, b"ping"), Violation::Protocol),
            (client(9, true, &[0; 126]), Violation::Protocol),
            (client(3, true, b"reserved"), Violation::Protocol),
            (client(1, true, &[b'a'; 20]), Violation::TooBig),
        ];
        for (input, violation) in cases {
            let mut reader = Reader::new(10, Bytes::from(input));
            assert_eq!(all(&mut reader), Err(violation));
        }
        // The limit counts the fragments together, before they all arrive.
        let mut reader = Reader::new(10, Bytes::from(client(1, false, b"123456")));
        assert_eq!(all(&mut reader), Ok(vec![]));
        feed(&mut reader, &client(0, false, b"7890123"));
        assert_eq!(all(&mut reader), Err(Violation::TooBig));
        // A frame header announcing more than the limit fails before its payload.
        let mut header = client(2, true, &vec![0; 70_000]);
        header.truncate(14);
        let mut reader = Reader::new(10, Bytes::from(header));
        assert_eq!(all(&mut reader), Err(Violation::TooBig));
    }

    #[test]
    fn an_idle_reader_holds_nothing() {
        let mut reader = Reader::new(100, Bytes::new());
        feed(&mut reader, &client(1, true, b"PING"));
        assert_eq!(all(&mut reader), Ok(vec![Input::Line(Bytes::from("PING"))]));
        assert_eq!(reader.capacity(), 0);
    }
}
