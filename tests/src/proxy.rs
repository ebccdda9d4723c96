//! A TCP proxy in front of nats-server that can be told to go silent: it
//! stops forwarding in both directions without closing any connection, the
//! way a silent partition (a dropped route, a firewall eating packets) looks
//! to both ends. Used to cut one node off NATS while its TCP stays open.
//! It can also cut: close every connection it carries at once, the way a
//! flapping network path resets them (new connections go through).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct SilentProxy {
    pub port: u16,
    silent: Arc<AtomicBool>,
    cuts: Arc<tokio::sync::watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy on 127.0.0.1");
        let port = listener.local_addr().expect("proxy address").port();
        let silent = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let flag = silent.clone();
        let cut = cuts.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                let mut cut = cut.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    // Dropping the pumps closes both connections.
                    tokio::select! {
                        _ = async {
                            tokio::join!(
                                pump(client_read, server_write, flag.clone()),
                                pump(server_read, client_write, flag)
                            )
                        } => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            silent,
            cuts,
            task,
        }
    }

    /// Closes every connection the proxy carries now; later ones go through.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops (true) or resumes (false) forwarding; connections stay open.
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::SeqCst);
    }
}

impl Drop for SilentProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies bytes while not silent; while silent it holds what it read (and
/// stops reading once it holds some), so nothing crosses and nothing closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while silent.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while silent.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
