//! JWT-in-username TURN credentials minted by `iceway-auth`: accepted, and their `alloc` claim is
//! the user's allocation quota.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use iceway_auth::turn_credential::{CredentialFormat, TurnCredentials, TurnLimits};
use stun::attributes::*;
use stun::message::*;

#[test]
fn jwt_username_allocates_and_its_alloc_claim_limits_the_user() {
    let server = TurnServer::start(ServerOptions::default());
    let creds = TurnCredentials::from_secret_lines(SECRET).expect("secret");
    let minted = creds
        .mint(
            CredentialFormat::Jwt,
            "camera-7",
            Duration::from_secs(600),
            TurnLimits {
                alloc: Some(1),
                kbps: Some(2000),
            },
            SystemTime::now(),
        )
        .expect("mint");
    let allocate = || {
        let mut m = request(METHOD_ALLOCATE);
        m.add(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        m
    };
    let first = Client::new(server.addr);
    let nonce = first.nonce();
    let r = first.ask(&sign(
        allocate(),
        &minted.username,
        &minted.password,
        &nonce,
    ));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{r}");

    let second = Client::new(server.addr);
    let nonce = second.nonce();
    let r = second.ask(&sign(
        allocate(),
        &minted.username,
        &minted.password,
        &nonce,
    ));
    assert_eq!(error_code(&r), Some(486), "alloc claim = 1");

    let expired = creds
        .mint(
            CredentialFormat::Jwt,
            "camera-8",
            Duration::from_secs(60),
            TurnLimits::default(),
            SystemTime::now() - Duration::from_secs(3600),
        )
        .expect("mint");
    let r = second.ask(&sign(
        allocate(),
        &expired.username,
        &expired.password,
        &nonce,
    ));
    assert_eq!(error_code(&r), Some(401), "expired JWT");
    assert!(server.metric(r#"iceway_turn_auth_failures_total{reason="expired"}"#) >= 1.0);
}
