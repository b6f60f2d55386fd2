//! A minimal SMTP server that accepts every message and keeps its text,
//! standing in for the mail relay behind `SMTP_URL`.

use std::sync::Arc;

/// A minimal SMTP server that accepts every message and keeps its text.
#[derive(Default)]
pub struct SmtpSink {
    messages: std::sync::Mutex<Vec<String>>,
}

impl SmtpSink {
    pub async fn start() -> (Arc<Self>, String) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let me = Arc::new(Self::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind smtp sink");
        let url = format!("smtp://{}", listener.local_addr().expect("addr"));
        let sink = me.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    let _ = w.write_all(b"220 sink ESMTP\r\n").await;
                    let mut data: Option<String> = None;
                    while let Ok(Some(line)) = lines.next_line().await {
                        if let Some(buf) = data.as_mut() {
                            if line == "." {
                                sink.messages
                                    .lock()
                                    .expect("lock")
                                    .push(std::mem::take(buf));
                                data = None;
                                let _ = w.write_all(b"250 OK queued\r\n").await;
                            } else {
                                buf.push_str(&line);
                                buf.push('\n');
                            }
                            continue;
                        }
                        let cmd = line.to_ascii_uppercase();
                        let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                            b"250 sink\r\n"
                        } else if cmd.starts_with("DATA") {
                            data = Some(String::new());
                            b"354 go ahead\r\n"
                        } else if cmd.starts_with("QUIT") {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            break;
                        } else {
                            b"250 OK\r\n"
                        };
                        let _ = w.write_all(reply).await;
                    }
                });
            }
        });
        (me, url)
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().expect("lock").clone()
    }
}
