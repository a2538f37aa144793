//! What the stress crate's integration tests share: a small in-process
//! server on an ephemeral loopback port, and a correct echo handler.
#![allow(dead_code)] // each test target uses its own part of it

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use stress::frame::{self, DEFAULT_MAX_FRAME};

/// A listener on an ephemeral port whose accept loop hands each connection
/// (with its index, from 0) to `handle` on a new thread. Dropping it stops
/// accepting.
pub struct TestServer {
    pub addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(handle: impl Fn(usize, TcpStream) + Send + Sync + 'static) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a test server");
        let addr = listener.local_addr().expect("test server address");
        let stopping = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(handle);
        let acceptor = {
            let stopping = Arc::clone(&stopping);
            thread::spawn(move || {
                for (index, stream) in listener.incoming().enumerate() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let handle = Arc::clone(&handle);
                    thread::spawn(move || handle(index, stream));
                }
            })
        };
        TestServer {
            addr,
            stopping,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// A correct thread-per-connection echo server, frame by frame.
pub fn echo_frames(_: usize, mut stream: TcpStream) {
    while let Ok(Some(payload)) = frame::read_frame(&mut stream, DEFAULT_MAX_FRAME) {
        if frame::write_frame(&mut stream, &payload).is_err() {
            return;
        }
    }
}
