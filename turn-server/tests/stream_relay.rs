//! Relaying over a TCP client connection the way a real stream delivers bytes: many frames in
//! one segment, frames cut anywhere between segments, and bursts from the peer that the server
//! coalesces into one write. Every frame must arrive once, in order, padded as RFC 8656 §12.5
//! says.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use common::*;
use stun::attributes::*;
use stun::message::*;

const CHANNEL: u16 = 0x4001;
const FRAMES: usize = 60;

fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).expect("a frame within 10 s");
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let rest = if head[0] & 0xC0 == 0x40 {
        (len + 3) & !3
    } else {
        16 + len
    };
    let mut frame = head.to_vec();
    frame.resize(4 + rest, 0);
    stream
        .read_exact(&mut frame[4..])
        .expect("the frame's body");
    frame
}

fn ask(stream: &mut TcpStream, bytes: &[u8]) -> Message {
    stream.write_all(bytes).expect("send");
    let mut m = Message::new();
    m.unmarshal_binary(&read_frame(stream))
        .expect("a STUN response");
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

    let mut m = request(METHOD_ALLOCATE);
    m.add(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let r = ask(&mut stream, &m.raw);
    let nonce = String::from_utf8(r.get(ATTR_NONCE).expect("401 nonce")).expect("utf8");
    let mut m = request(METHOD_ALLOCATE);
    m.add(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let r = ask(&mut stream, &sign(m, USER, PASSWORD, &nonce));
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
    let r = ask(&mut stream, &sign(m, USER, PASSWORD, &nonce));
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
        stream.write_all(&burst[w[0]..w[1]]).expect("write");
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
        let frame = read_frame(&mut stream);
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
    m.unmarshal_binary(&read_frame(&mut stream))
        .expect("a Data indication");
    assert_eq!(m.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
    assert_eq!(m.get(ATTR_DATA).expect("DATA"), b"no channel");
}
