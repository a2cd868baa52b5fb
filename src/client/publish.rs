//! `crier pub CH MESSAGE`: publishes one message; with `-` as the message, one
//! message per line of standard input, pipelined.

use anyhow::{Context, bail};
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{DEFAULT_ADDR, Frame, FrameReader, Security, auth_line, connect};

#[derive(Args, Debug)]
pub struct PubArgs {
    /// Channel to publish to.
    pub channel: String,
    /// The message, or `-` to publish each line of standard input.
    pub message: String,
    /// Server address.
    #[arg(long, env = "CRIER_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,
    #[command(flatten)]
    pub security: Security,
}

pub async fn run(args: PubArgs) -> anyhow::Result<()> {
    if args.message != "-" && args.message.contains(['\r', '\n']) {
        bail!("a message cannot hold CR or LF (use `-` to publish one message per line)");
    }
    let (reader, mut writer) = connect(&args.addr, &args.security).await?;
    let auth = auth_line(&args.security);
    let prefix = format!("PUBLISH {} ", args.channel).into_bytes();

    // Send and read replies at once, so a long input never fills both ways.
    let send = async move {
        let mut sent = 0usize;
        if let Some(auth) = &auth {
            writer.write_all(auth).await.context("sending to crier")?;
            sent += 1;
        }
        let mut publish = |message: &[u8]| {
            sent += 1;
            [&prefix[..], message, b"\r\n"].concat()
        };
        if args.message == "-" {
            let mut stdin = BufReader::new(tokio::io::stdin());
            let mut line = Vec::new();
            while stdin.read_until(b'\n', &mut line).await.context("reading standard input")? > 0 {
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                writer.write_all(&publish(&line)).await.context("sending to crier")?;
                line.clear();
            }
        } else {
            writer
                .write_all(&publish(args.message.as_bytes()))
                .await
                .context("sending to crier")?;
        }
        writer.shutdown().await.context("closing the connection")?;
        anyhow::Ok(sent)
    };
    let receive = async move {
        let mut frames = FrameReader::new(reader);
        let mut confirmed = 0usize;
        while let Some(frame) = frames.next().await? {
            match frame {
                Frame::Line(reply) if &reply[..] == b"CONFIRMED" => confirmed += 1,
                Frame::Line(reply) => bail!("crier answered: {}", reply.escape_ascii()),
                Frame::Message { .. } => bail!("unexpected message on a publishing connection"),
            }
        }
        anyhow::Ok(confirmed)
    };
    let (sent, confirmed) = tokio::try_join!(send, receive)?;
    if confirmed != sent {
        bail!("{sent} sent but {confirmed} confirmed before the server closed");
    }
    Ok(())
}
