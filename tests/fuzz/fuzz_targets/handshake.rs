//! Handshake decoding on arbitrary bytes: `Hello::decode` and `Ack::decode` never panic, and
//! whatever they accept encodes back to the bytes it came from (the hello exactly; the ack
//! exactly when its reason is valid UTF-8, which `decode` otherwise repairs lossily). The same
//! bytes read as a challenge (`nonce [16] | mac`) are checked by `verify_mac`, which must
//! refuse a forged code of any length and accept the one `auth_mac` computes.

#![no_main]

use kvr::transport::handshake::{
    auth_mac, verify_mac, Ack, Hello, Role, ADDR_BYTES_MAX, NONCE_BYTES, PROTOCOL_VERSION,
};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz secret";

fuzz_target!(|data: &[u8]| {
    let hello = match Hello::decode(data) {
        Ok(h) => {
            assert!(h.addr.len() <= ADDR_BYTES_MAX);
            assert_eq!(h.encode(), data, "hello does not round-trip: {h:?}");
            // Judging a peer's identity must not panic whatever it claims.
            let _ = h.check(h.cluster_id, h.to);
            let _ = h.check(0, 1);
            h
        }
        Err(_) => Hello {
            version: PROTOCOL_VERSION,
            cluster_id: 9,
            from: 2,
            to: 1,
            incarnation: 1,
            nonce: [7; NONCE_BYTES],
            auth: true,
            addr: String::new(),
        },
    };
    if let Ok(a) = Ack::decode(data) {
        let encoded = a.encode();
        if std::str::from_utf8(&data[9..]).is_ok() {
            assert_eq!(encoded, data, "ack does not round-trip: {a:?}");
        }
        assert_eq!(Ack::decode(&encoded).as_ref(), Ok(&a));
        let _ = a.into_result();
    }
    if let Some((nonce, mac)) = data.split_first_chunk::<NONCE_BYTES>() {
        for role in [Role::Dialer, Role::Acceptor] {
            let good = auth_mac(
                SECRET,
                role,
                hello.cluster_id,
                hello.from,
                hello.to,
                &hello.nonce,
                nonce,
            );
            assert!(verify_mac(SECRET, role, &hello, nonce, &good).is_ok());
            if mac != good {
                assert!(verify_mac(SECRET, role, &hello, nonce, mac).is_err());
            }
        }
    }
});
