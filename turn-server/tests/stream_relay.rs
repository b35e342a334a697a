//! Relaying over a TCP or TLS client connection the way a real stream delivers bytes: many
//! frames in one segment (or record), frames cut anywhere between segments (records), and bursts
//! from the peer that the server writes in one go. Every frame must arrive once, in order, padded
//! as RFC 8656 §12.5 says; over TLS each in a record of its own, as coturn's clients expect.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use stun::attributes::*;
use stun::message::*;

const CHANNEL: u16 = 0x4001;
const FRAMES: usize = 60;

/// A client's stream: bytes out, frames in.
trait Wire {
    fn send(&mut self, bytes: &[u8]);
    fn frame(&mut self) -> Vec<u8>;
}

/// The length of the frame whose first four bytes are `head`.
fn frame_len(head: &[u8]) -> usize {
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    4 + if head[0] & 0xC0 == 0x40 {
        (len + 3) & !3
    } else {
        16 + len
    }
}

impl Wire for TcpStream {
    fn send(&mut self, bytes: &[u8]) {
        self.write_all(bytes).expect("send");
    }

    fn frame(&mut self) -> Vec<u8> {
        let mut frame = vec![0u8; 4];
        self.read_exact(&mut frame).expect("a frame within 10 s");
        frame.resize(frame_len(&frame), 0);
        self.read_exact(&mut frame[4..]).expect("the frame's body");
        frame
    }
}

/// A TLS client that decrypts the server's records one at a time, so it sees what each holds.
struct TlsWire {
    tcp: TcpStream,
    tls: rustls::ClientConnection,
}

impl TlsWire {
    fn connect(addr: SocketAddr, ca: rustls::pki_types::CertificateDer<'static>) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).expect("the test CA");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = "localhost".try_into().expect("server name");
        let tls = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        tcp.set_nodelay(true).expect("nodelay");
        let mut wire = Self { tcp, tls };
        while wire.tls.is_handshaking() {
            wire.write_out();
            if wire.tls.is_handshaking() {
                wire.record();
            }
        }
        wire.write_out();
        wire
    }

    fn write_out(&mut self) {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.tcp).expect("write TLS");
        }
    }

    /// Reads one record from the socket; returns the application data it carried.
    fn record(&mut self) -> Vec<u8> {
        let mut record = vec![0u8; 5];
        self.tcp
            .read_exact(&mut record)
            .expect("a record within 10 s");
        let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
        record.resize(5 + len, 0);
        self.tcp
            .read_exact(&mut record[5..])
            .expect("the record's body");
        let mut rd = &record[..];
        while !rd.is_empty() {
            self.tls.read_tls(&mut rd).expect("read TLS");
        }
        self.tls.process_new_packets().expect("a valid record");
        let mut plain = Vec::new();
        match self.tls.reader().read_to_end(&mut plain) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("TLS read: {e}"),
        }
        plain
    }
}

impl Wire for TlsWire {
    fn send(&mut self, bytes: &[u8]) {
        self.tls.writer().write_all(bytes).expect("send");
        self.write_out();
    }

    fn frame(&mut self) -> Vec<u8> {
        // Records without application data (session tickets) are skipped.
        let plain = std::iter::repeat_with(|| self.record())
            .take(8)
            .find(|p| !p.is_empty())
            .expect("a record with data");
        assert!(plain.len() >= 4, "a record of {} bytes", plain.len());
        assert_eq!(
            plain.len(),
            frame_len(&plain),
            "one frame per record; this record starts {:02x?}",
            &plain[..plain.len().min(16)]
        );
        plain
    }
}

fn ask(wire: &mut impl Wire, bytes: &[u8]) -> Message {
    wire.send(bytes);
    let mut m = Message::new();
    m.unmarshal_binary(&wire.frame()).expect("a STUN response");
    m
}

fn payload(i: usize) -> Vec<u8> {
    // 1 to 60 bytes: every padding length, with the frame index in every byte.
    vec![i as u8; 1 + i]
}

#[test]
fn frames_in_bursts_and_cut_across_segments_relay_in_order_and_come_back_padded() {
    let server = TurnServer::start(ServerOptions {
        args: vec!["--allow-peers", "127.0.0.0/8"],
        ..Default::default()
    });
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    relay_bursts(&mut stream);
}

#[test]
fn over_tls_every_frame_of_a_burst_comes_in_a_record_of_its_own() {
    let cert = TestCert::new();
    let mut args = vec!["--allow-peers", "127.0.0.0/8"];
    args.extend(cert.args());
    let server = TurnServer::start(ServerOptions {
        args,
        env: vec![("ICEWAY_TURN__TLS_LISTEN", "127.0.0.1:0".into())],
        ..Default::default()
    });
    let addr = server.tls_addr.expect("a TLS listener");
    let mut wire = TlsWire::connect(addr, cert.der.clone());
    relay_bursts(&mut wire);
}

fn relay_bursts(stream: &mut impl Wire) {
    let mut m = request(METHOD_ALLOCATE);
    m.add(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let r = ask(stream, &m.raw);
    let nonce = String::from_utf8(r.get(ATTR_NONCE).expect("401 nonce")).expect("utf8");
    let mut m = request(METHOD_ALLOCATE);
    m.add(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let r = ask(stream, &sign(m, USER, PASSWORD, &nonce));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "Allocate: {r}");
    let v = r.get(ATTR_XOR_RELAYED_ADDRESS).expect("relayed address");
    let relayed = iceway_turn::proto::message::decode_xor_address(&v, &r.transaction_id.0)
        .expect("an address");

    let peer = UdpSocket::bind("127.0.0.1:0").expect("peer");
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let peer_addr = peer.local_addr().expect("peer addr");
    let mut m = request(METHOD_CHANNEL_BIND);
    m.add(ATTR_CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]);
    xor_peer(&mut m, peer_addr);
    let r = ask(stream, &sign(m, USER, PASSWORD, &nonce));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "ChannelBind: {r}");

    // Client → peer: all frames in one buffer, written in three pieces cut inside a header
    // and inside a payload.
    let mut burst = Vec::new();
    for i in 0..FRAMES {
        let p = payload(i);
        burst.extend_from_slice(&CHANNEL.to_be_bytes());
        burst.extend_from_slice(&(p.len() as u16).to_be_bytes());
        burst.extend_from_slice(&p);
        burst.resize((burst.len() + 3) & !3, 0);
    }
    let cuts = [0, 2, burst.len() / 2 + 1, burst.len()];
    for w in cuts.windows(2) {
        stream.send(&burst[w[0]..w[1]]);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut buf = [0u8; 2048];
    for i in 0..FRAMES {
        let (n, from) = peer.recv_from(&mut buf).expect("datagram at the peer");
        assert_eq!(from, relayed);
        assert_eq!(&buf[..n], payload(i).as_slice(), "datagram {i}");
    }

    // Peer → client: a burst of datagrams back, each a padded ChannelData frame on the stream;
    // then one from a second port of the permitted address, with no channel: a Data indication.
    for i in 0..FRAMES {
        peer.send_to(&payload(i), relayed).expect("peer send");
    }
    for i in 0..FRAMES {
        let frame = stream.frame();
        let p = payload(i);
        assert_eq!(&frame[..2], &CHANNEL.to_be_bytes(), "frame {i}");
        assert_eq!(
            usize::from(u16::from_be_bytes([frame[2], frame[3]])),
            p.len()
        );
        assert_eq!(&frame[4..4 + p.len()], p.as_slice(), "frame {i}");
        assert_eq!(frame.len() % 4, 0, "padded");
    }
    let other = UdpSocket::bind("127.0.0.1:0").expect("second peer port");
    other.send_to(b"no channel", relayed).expect("send");
    let mut m = Message::new();
    m.unmarshal_binary(&stream.frame())
        .expect("a Data indication");
    assert_eq!(m.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
    assert_eq!(m.get(ATTR_DATA).expect("DATA"), b"no channel");
}
