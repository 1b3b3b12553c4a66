//! Raft entry payloads on arbitrary bytes: `Command::decode`, `unpack` (several commands packed
//! into one entry) and `ConfContext::decode` never panic (entries come from the leader and
//! from disk), and whatever they accept survives an encode/decode round trip unchanged.

#![no_main]

use kvr::command::{pack, unpack, Command, ConfContext};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Command::decode(data) {
        let encoded = c.encode();
        // The encoding is canonical: never longer than any encoding it was decoded from.
        assert!(encoded.len() <= data.len(), "{c:?}");
        assert_eq!(Command::decode(&encoded).as_ref(), Ok(&c));
    }
    if let Ok(Some(parts)) = unpack(data) {
        for part in &parts {
            let _ = Command::decode(part);
        }
        let owned: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        let packed = pack(&owned);
        assert_eq!(packed.len(), data.len());
        assert_eq!(unpack(&packed), Ok(Some(parts)));
    }
    if let Ok(cc) = ConfContext::decode(data) {
        assert_eq!(ConfContext::decode(&cc.encode()).as_ref(), Ok(&cc));
    }
});
