//! A benchmark baseline, not part of the bastion: the least a tokio TCP proxy can do, one
//! `copy_bidirectional` per connection with no parsing, recording or audit. `bench/postgres.sh`
//! runs it as the "tokio relay" column so the bastion's cost per transaction can be split into
//! what any tokio relay pays on this machine and what portcullis adds (issue #4).
//!
//!     cargo run --release --example tcp_relay -- 127.0.0.1:7000 127.0.0.1:5432

use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut arguments = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (arguments.next(), arguments.next()) else {
        eprintln!("usage: tcp_relay LISTEN_ADDRESS UPSTREAM_ADDRESS");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(&listen).await?;
    loop {
        let (mut client, _) = listener.accept().await?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            if let Ok(mut server) = TcpStream::connect(&upstream).await {
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}
