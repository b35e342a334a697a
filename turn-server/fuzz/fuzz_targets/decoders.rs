//! Arbitrary bytes through the STUN and ChannelData decoders, the stream framer and the whole
//! protocol core (as a client datagram, authenticated or not): nothing may panic.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use iceway_turn::metrics::Metrics;
use iceway_turn::policy::PeerPolicy;
use iceway_turn::proto::channel_data;
use iceway_turn::proto::credentials::StaticUsers;
use iceway_turn::proto::message;
use iceway_turn::proto::{
    CoreConfig, Family, FiveTuple, Now, PortRequest, Relay, RelayError, RelayId, RelayPorts,
    Server, Shared, Transport,
};
use libfuzzer_sys::fuzz_target;

struct Relays(usize);

impl RelayPorts for Relays {
    fn allocate(&mut self, _family: Family, _port: PortRequest) -> Result<Relay, RelayError> {
        self.0 += 1;
        Ok(Relay {
            id: self.0,
            local: "192.0.2.1:50000".parse().expect("static addr"),
        })
    }

    fn release(&mut self, _id: RelayId) {}
}

fn shared() -> Arc<Shared> {
    static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let cfg = CoreConfig {
                realm: "fuzz".into(),
                ..CoreConfig::default()
            };
            let users = StaticUsers::new(&[("u".into(), "p".into())], "fuzz");
            Arc::new(Shared::new(
                cfg,
                Box::new(users),
                PeerPolicy::default(),
                Metrics::new().expect("metrics"),
            ))
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let _ = message::decode(data);
    if let Ok(cd) = channel_data::parse(data) {
        assert!(cd.payload.len() + channel_data::HEADER_LEN <= data.len());
    }
    if let Some(first4) = data.get(..4) {
        let _ = channel_data::stream_frame_len([first4[0], first4[1], first4[2], first4[3]]);
    }
    let mut server = Server::new(shared());
    let mut relays = Relays(0);
    let ft = FiveTuple {
        client: "198.51.100.1:4000".parse().expect("static addr"),
        server: "192.0.2.10:3478".parse().expect("static addr"),
        transport: Transport::Udp,
    };
    let now = Now {
        instant: Instant::now(),
        unix: SystemTime::now(),
    };
    server.handle_client(data, ft, now, &mut relays);
    while server.poll_output().is_some() {}
    server.handle_peer(
        1,
        "198.51.100.9:7".parse().expect("static addr"),
        data,
        now.instant,
    );
    server.sweep(now, &mut relays);
});
