use super::*;

#[test]
fn the_direct_heartbeat_is_the_sessions_heartbeat_as_a_chunk() {
    let comment = crate::sse::encode_comment("");
    assert_eq!(HEARTBEAT, &comment[..]);
    let mut size = [0u8; 20];
    let n = hex_line(comment.len(), &mut size);
    assert_eq!(HEARTBEAT_CHUNK, [&size[..n], &comment[..], b"\r\n"].concat());
}

#[test]
fn hex_lines_are_chunk_sizes() {
    let mut out = [0u8; 20];
    let n = hex_line(0, &mut out);
    assert_eq!(&out[..n], b"0\r\n");
    let n = hex_line(0x1a2b, &mut out);
    assert_eq!(&out[..n], b"1a2b\r\n");
    let n = hex_line(usize::MAX, &mut out);
    assert_eq!(&out[..n], b"ffffffffffffffff\r\n");
}

/// Chunks of every size, small ones sent flat and large ones vectored,
/// through a socket with a small send buffer and a slow reader, so
/// that writes stop part way: the reader gets exactly the chunks.
#[tokio::test]
async fn chunks_arrive_whole_through_a_socket_that_fills() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    socket2::SockRef::from(&server)
        .set_send_buffer_size(4096)
        .unwrap();
    let chunks: Vec<Vec<Bytes>> = (0..3000usize)
        .map(|i| {
            let len = [1, 9, 100, FLAT - 8, FLAT + 3, 5000][i % 6] + i % 13;
            let fill = b'a' + (i % 26) as u8;
            (0..1 + i % 3).map(|_| Bytes::from(vec![fill; len])).collect()
        })
        .collect();
    let mut expected = Vec::new();
    for (i, frames) in chunks.iter().enumerate() {
        let body: Vec<u8> = frames.concat();
        if i % 2 == 0 {
            expected.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            expected.extend_from_slice(&body);
            expected.extend_from_slice(b"\r\n");
        } else {
            expected.extend_from_slice(&body);
        }
    }
    let writer = tokio::spawn(async move {
        let mut partial = 0;
        for (i, frames) in chunks.iter().enumerate() {
            let mut offset = 0;
            std::future::poll_fn(|cx| {
                let step = poll_write_chunk(cx, &server, frames, i % 2 == 0, &mut offset);
                if step.is_pending() && offset > 0 {
                    partial += 1;
                }
                step
            })
            .await
            .unwrap();
        }
        partial
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 700];
    loop {
        let n = client.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let partial = writer.await.unwrap();
    assert!(partial > 0, "no write stopped part way; the test proves nothing");
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the bytes differ from the chunks written");
}

/// A stream's queue as its writer sees it, the way `StreamSession`
/// hands out ephemeral events.
struct Queued(Arc<crate::hub::Subscriber>);

impl Chunks for Queued {
    fn poll_chunk(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<Option<()>> {
        let mut items = std::collections::VecDeque::new();
        match ready!(self.0.poll_drain(cx, &mut items)) {
            Err(_) => Poll::Ready(None),
            Ok(()) => {
                for item in items {
                    if let crate::hub::Item::Event(ev, _) = item {
                        out.push(ev.frame().clone());
                    }
                }
                Poll::Ready(Some(()))
            }
        }
    }
    fn poll_closed(&self, cx: &mut Context<'_>) -> bool {
        self.0.poll_closed(cx)
    }
    fn subscriber(&self) -> &crate::hub::Subscriber {
        &self.0
    }
}

/// The stream's socket as the hub sees it, except that every
/// seventh event goes out in part: half of it, the rest kept for the
/// writer, as from an all but full socket.
struct Splitting(Arc<Socket>, std::sync::atomic::AtomicUsize);

impl HeartbeatSink for Splitting {
    fn try_heartbeat(&self) -> io::Result<usize> {
        self.0.try_heartbeat()
    }
    fn heartbeat_len(&self) -> usize {
        self.0.heartbeat_len()
    }
    fn counted_bytes(&self) -> u64 {
        self.0.counted_bytes()
    }
    fn takes_events(&self) -> bool {
        true
    }
    fn try_event(&self, frame: &[u8]) -> EventWrite {
        let i = self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let limit = if i % 7 == 3 {
            frame.len() / 2 + 1
        } else {
            usize::MAX
        };
        self.0.try_event_upto(frame, limit)
    }
}

/// The body of the complete chunks at the start of a chunked response.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(line) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap(), 16).unwrap();
        let chunk = &raw[line + 2..];
        if chunk.len() < size + 2 {
            break;
        }
        body.extend_from_slice(&chunk[..size]);
        assert_eq!(&chunk[size..size + 2], b"\r\n", "a chunk ends with CRLF");
        raw = &chunk[size + 2..];
    }
    body
}

/// Events the hub writes to an idle stream's socket, one in seven in
/// part, while the client first does not read and then reads slowly:
/// the writer writes each rest before anything else, so the client
/// gets exactly the events, in order, in well-formed chunks. One
/// thread, so that nothing runs between a direct write and the look at
/// what it left.
#[tokio::test(flavor = "current_thread")]
async fn events_written_in_part_by_the_hub_are_finished_by_the_writer() {
    use crate::hub::{Item, Pushed, Subscriber};
    use crate::metrics::WriteTimes;
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    socket2::SockRef::from(&server)
        .set_send_buffer_size(4096)
        .unwrap();
    let sub = Subscriber::new(1, 64 << 20);
    sub.set_ready(0, crate::sse::EventId::ZERO);
    sub.ready().await.unwrap();
    let writer = StreamWriter::new(server, Queued(sub.clone()), true);
    let sock = writer.sock.clone();
    sub.attach_sink(Arc::new(Splitting(sock.clone(), Default::default())));
    let writer = tokio::spawn(writer);
    let events: Vec<_> = (0..3000usize)
        .map(|i| {
            let data = vec![b'a' + (i % 26) as u8; [1, 40, 300, 900][i % 4] + i % 7];
            let e = crate::sse::Event {
                data: Bytes::from(data),
                ..Default::default()
            };
            Arc::new(crate::sse::Encoded::new(&e, None, 0))
        })
        .collect();
    let expected: Vec<u8> = events.iter().flat_map(|e| e.frame().to_vec()).collect();
    let start_reading = Arc::new(tokio::sync::Notify::new());
    let hub = tokio::spawn({
        let (sub, start_reading) = (sub.clone(), start_reading.clone());
        async move {
            let (mut direct, mut partial) = (0, 0);
            for (i, ev) in events.into_iter().enumerate() {
                match sub.push_live(Item::Event(ev, 0)) {
                    Pushed::Direct => {
                        direct += 1;
                        sub.write_direct(&mut WriteTimes::default());
                        partial += sock.rest.lock().is_some() as usize;
                    }
                    pushed => assert!(!pushed.wake(), "the queue never overflows here"),
                }
                if partial > 0 || i == 500 {
                    start_reading.notify_one();
                }
                tokio::task::yield_now().await;
            }
            (direct, partial)
        }
    });
    start_reading.notified().await;
    let mut got = Vec::new();
    let mut buf = [0u8; 700];
    while dechunk(&got).len() < expected.len() {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended early");
        got.extend_from_slice(&buf[..n]);
    }
    let (direct, partial) = hub.await.unwrap();
    sub.close(crate::hub::Close::Shutdown);
    writer.await.unwrap();
    assert!(
        direct > 0 && partial > 0,
        "{direct} direct, {partial} in part: the test proves nothing"
    );
    let body = dechunk(&got);
    assert_eq!(body.len(), expected.len());
    assert!(body == expected, "the events differ from those published");
}

/// An event stream's task lives as long as the stream: keep it small.
#[test]
fn a_stream_writer_stays_small() {
    let size = std::mem::size_of::<StreamWriter>();
    assert!(size <= 256, "the stream writer is {size} bytes");
    let size = std::mem::size_of::<StreamWriter<crate::mercure::MercureStream>>();
    assert!(size <= 256, "the Mercure stream writer is {size} bytes");
}
