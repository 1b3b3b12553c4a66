//! Option parsing on arbitrary UTF-8, as `kvr_options_set` feeds it: `Config::set` in any
//! order, then `Config::validate`, and `parse_peers` alone. Nothing may panic; a failed `set`
//! is `InvalidArgument` (the only code `kvr_options_set` documents) and leaves the
//! configuration as it was; what `validate` accepts holds the invariants `Replica::open`
//! relies on.

#![no_main]

use arbitrary::Arbitrary;
use kvr::config::{parse_peers, Config, OPTION_KEYS, PEERS_MAX};
use kvr::error::Error;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Key {
    /// One of the documented keys (index modulo their number), so values get exercised.
    Known(u8),
    /// Anything else, to exercise the refusal of unknown keys.
    Any(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    sets: Vec<(Key, String)>,
    peers: String,
}

fuzz_target!(|input: Input| {
    let mut cfg = Config::default();
    for (key, value) in &input.sets {
        let key = match key {
            Key::Known(i) => OPTION_KEYS[*i as usize % OPTION_KEYS.len()],
            Key::Any(s) => s.as_str(),
        };
        let before = cfg.clone();
        match cfg.set(key, value) {
            Ok(()) => {
                assert!(OPTION_KEYS.contains(&key), "unknown key {key:?} accepted");
                if key == "peers" {
                    assert_eq!(parse_peers(value).as_ref(), Ok(&cfg.peers));
                }
            }
            Err(Error::InvalidArgument(_)) => {
                assert_eq!(cfg, before, "a refused {key:?} changed the configuration")
            }
            Err(e) => panic!("set({key:?}, {value:?}) failed with {e:?}, not InvalidArgument"),
        }
    }
    if cfg.validate().is_ok() {
        assert!(cfg.node_id >= 1);
        assert!(!cfg.dir.as_os_str().is_empty());
        assert!(cfg.election_ticks > cfg.heartbeat_ticks);
        assert!(!(cfg.join && cfg.restore_from.is_some()));
        assert!(!cfg.join || cfg.listen_addr().is_some());
        assert!(cfg.peers.len() <= PEERS_MAX);
    }
    let _ = (
        cfg.single_node(),
        cfg.listen_addr(),
        cfg.election_timeout_ms(),
    );

    if let Ok(peers) = parse_peers(&input.peers) {
        assert!(peers.len() <= PEERS_MAX);
        assert!(peers.keys().all(|&id| id >= 1));
        // What was accepted, written back in canonical form, parses to the same members.
        let canonical: Vec<String> = peers.iter().map(|(id, a)| format!("{id}={a}")).collect();
        assert_eq!(parse_peers(&canonical.join(",")).as_ref(), Ok(&peers));
    }
});
