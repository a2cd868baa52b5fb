//! `crier sub CH... [--pattern P...]`: prints `channel payload` per message
//! (or only the payload with `--raw`) until interrupted. It speaks version 2,
//! so payloads arrive byte-exact whatever they hold.

use anyhow::{Context, bail};
use clap::Args;
use std::io::Write;
use tokio::io::AsyncWriteExt;

use super::{DEFAULT_ADDR, Frame, FrameReader, Security, auth_line, connect};

#[derive(Args, Debug)]
pub struct SubArgs {
    /// Channels to subscribe to.
    pub channels: Vec<String>,
    /// Glob patterns to subscribe to (Redis rules), repeatable.
    #[arg(long = "pattern", short = 'p')]
    pub patterns: Vec<String>,
    /// Print payloads only, one per line.
    #[arg(long)]
    pub raw: bool,
    /// Server address.
    #[arg(long, env = "CRIER_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,
    #[command(flatten)]
    pub security: Security,
}

pub async fn run(args: SubArgs) -> anyhow::Result<()> {
    if args.channels.is_empty() && args.patterns.is_empty() {
        bail!("name at least one channel or --pattern");
    }
    let (reader, mut writer) = connect(&args.addr, &args.security).await?;
    let auth = auth_line(&args.security);
    let mut request = auth.clone().unwrap_or_default();
    request.extend_from_slice(b"HELLO 2\r\n");
    for (command, names) in [("SUBSCRIBE", &args.channels), ("PSUBSCRIBE", &args.patterns)] {
        if !names.is_empty() {
            request.extend_from_slice(format!("{command} {}\r\n", names.join(" ")).as_bytes());
        }
    }
    writer.write_all(&request).await.context("sending to crier")?;

    let mut frames = FrameReader::new(reader);
    let mut unconfirmed =
        usize::from(auth.is_some()) + 1 + args.channels.len() + args.patterns.len();
    let mut out = std::io::stdout().lock();
    while let Some(frame) = frames.next().await? {
        match frame {
            Frame::Line(reply) if unconfirmed > 0 && &reply[..] == b"CONFIRMED" => {
                unconfirmed -= 1;
                if unconfirmed == 0 {
                    let subscribed = args.channels.len() + args.patterns.len();
                    eprintln!("crier: subscribed to {subscribed} channels and patterns");
                }
            }
            Frame::Line(reply) => bail!("crier answered: {}", reply.escape_ascii()),
            Frame::Message { channel, payload, .. } => {
                if !args.raw {
                    out.write_all(&channel)?;
                    out.write_all(b" ")?;
                }
                out.write_all(&payload)?;
                out.write_all(b"\n")?;
                out.flush()?;
            }
        }
    }
    bail!("connection closed by server")
}
