//! `crier client [ADDR]`: what you type is sent, and everything the server
//! sends is printed the moment it arrives (reading and writing run at once).
//! Works in a pipe too: at the end of input it waits for the server to answer
//! what was sent, then exits.

use anyhow::Context;
use std::io::Write;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{Frame, FrameReader, Security, auth_line, connect};

pub async fn run(addr: &str, security: &Security) -> anyhow::Result<()> {
    let (reader, mut writer) = connect(addr, security).await?;
    if let Some(auth) = auth_line(security) {
        writer.write_all(&auth).await.context("sending to crier")?;
    }
    eprintln!("connected to {addr}; type commands (SUBSCRIBE, PUBLISH ch text, HELLO 2, QUIT...)");
    let mut printer = tokio::spawn(print_frames(FrameReader::new(reader)));

    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let sending = async {
        loop {
            line.clear();
            if stdin.read_until(b'\n', &mut line).await.context("reading standard input")? == 0 {
                // End of input: let the server finish answering, then it closes.
                return writer.shutdown().await.context("closing the connection");
            }
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            line.extend_from_slice(b"\r\n");
            writer.write_all(&line).await.context("sending to crier")?;
        }
    };
    tokio::pin!(sending);
    tokio::select! {
        sent = &mut sending => {
            sent?;
            (&mut printer).await??;
        }
        printed = &mut printer => printed??,
    }
    eprintln!("connection closed by server");
    // Standard input may still be blocked in a read that cannot be cancelled.
    std::process::exit(0)
}

async fn print_frames(mut frames: FrameReader) -> anyhow::Result<()> {
    while let Some(frame) = frames.next().await? {
        let mut out = std::io::stdout().lock();
        match frame {
            Frame::Line(line) => out.write_all(&line)?,
            Frame::Message { pattern, channel, id, payload } => {
                write!(out, "message {}", channel.escape_ascii())?;
                if let Some(pattern) = pattern {
                    write!(out, " (pattern {})", pattern.escape_ascii())?;
                }
                // Version 3: the id to RESUME from.
                if let Some(id) = id {
                    write!(out, " [{}]", id.escape_ascii())?;
                }
                write!(out, ": {}", payload.escape_ascii())?;
            }
        }
        out.write_all(b"\n")?;
        out.flush()?;
    }
    Ok(())
}
