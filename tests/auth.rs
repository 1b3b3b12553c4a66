//! Peer authentication over plain TCP: with a `cluster_secret`, every connection starts with an
//! HMAC-SHA256 challenge-response, and wrong cluster ids, wrong secrets, unknown node ids and
//! replayed handshakes are refused (and logged) before any Raft message is read.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::{free_ports, kvr_bin, wait_until, Cluster, Node, FAST_RAFT};
use kvr::transport::frame::{
    self, KIND_CHALLENGE, KIND_HELLO, KIND_HELLO_ACK, KIND_PROOF, KIND_RAFT,
};
use kvr::transport::handshake::{auth_mac, Ack, Hello, Role, NONCE_BYTES, PROTOCOL_VERSION};

const SECRET: &str = "correct horse battery staple";

fn opts(secret: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut o = FAST_RAFT.to_vec();
    o.push(("cluster_secret", secret));
    o.push(("request_timeout_ms", "3000"));
    o
}

fn start(secret: &'static str) -> Cluster {
    Cluster::start_with(3, &opts(secret), |_| vec![kvr_bin().display().to_string()])
}

fn log_of(c: &Cluster, id: u64) -> String {
    std::fs::read_to_string(c.nodes[(id - 1) as usize].dir.with_extension("log"))
        .unwrap_or_default()
}

#[test]
fn a_cluster_with_a_secret_works_and_a_wrong_secret_is_refused() {
    let mut c = start(SECRET);
    let leader = c.wait_leader();
    assert_eq!(c.node(leader).cmd("put k v"), "OK");
    let victim = (1..=3).find(|&i| i != leader).unwrap();
    assert_eq!(c.node(victim).get("k"), "v");
    // The same node restarted with another secret can no longer take part.
    c.node(victim).kill9();
    let dir = c.node(victim).dir.clone();
    let wrong_opts = opts("a different secret, long enough");
    let mut imposter = Node::new(
        vec![kvr_bin().display().to_string()],
        victim,
        &dir,
        &c.peers,
        &wrong_opts,
    );
    imposter.start();
    let reply = imposter.cmd("put from-imposter x");
    assert!(
        reply.starts_with("ERR -13") && reply.contains("secret"),
        "{reply}"
    );
    assert_eq!(
        c.node(leader).cmd("put after k2"),
        "OK",
        "the others carry on"
    );
    assert_eq!(c.node(leader).get("from-imposter"), "NOT_FOUND");
    wait_until("the refusal is logged", Duration::from_secs(10), || {
        log_of(&c, leader).contains("refused a connection") && log_of(&c, leader).contains("secret")
    });
}

#[test]
fn wrong_cluster_id_and_unknown_node_are_refused() {
    let mut c = start(SECRET);
    let leader = c.wait_leader();
    // Node 9 is not a member: it knows the secret but the cluster refuses it.
    let port = free_ports(1)[0];
    let peers = format!("{},9=127.0.0.1:{port}", c.peers);
    let dir = c.root().join("n9");
    let mut stranger = Node::new(
        vec![kvr_bin().display().to_string()],
        9,
        &dir,
        &peers,
        &opts(SECRET),
    );
    stranger.start();
    let reply = stranger.cmd("put x y");
    assert!(
        reply.starts_with("ERR -13") && reply.contains("not a member"),
        "{reply}"
    );
    // Node 2's identity in another cluster.
    let mut other_opts = opts(SECRET);
    other_opts.push(("cluster_id", "42"));
    let dir = c.root().join("other");
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let mut foreign = Node::new(
        vec![kvr_bin().display().to_string()],
        follower,
        &dir,
        &c.peers,
        &other_opts,
    );
    // It cannot bind the follower's port while the follower runs: stop the follower first.
    c.node(follower).kill9();
    foreign.start();
    let reply = foreign.cmd("put x y");
    assert!(
        reply.starts_with("ERR -13") && reply.contains("cluster id"),
        "{reply}"
    );
    assert_eq!(c.node(leader).cmd("put still ok"), "OK");
}

/// Speaks the handshake by hand to node 1 (alone; nodes 2 and 3 are never started).
struct Handshaker {
    addr: String,
    hello: Hello,
}

impl Handshaker {
    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    fn send(s: &mut TcpStream, kind: u8, payload: &[u8]) {
        let mut out = Vec::new();
        frame::put_frame(&mut out, kind, payload);
        s.write_all(&out).unwrap();
    }

    fn read(s: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut buf = Vec::new();
        let kind = frame::read_frame(s, 4096, &mut buf).unwrap();
        (kind, buf)
    }

    /// Sends the hello; returns the acceptor's nonce from its challenge.
    fn hello(&self, s: &mut TcpStream) -> [u8; NONCE_BYTES] {
        Self::send(s, KIND_HELLO, &self.hello.encode());
        let (kind, challenge) = Self::read(s);
        assert_eq!(kind, KIND_CHALLENGE);
        let nonce: [u8; NONCE_BYTES] = challenge[..NONCE_BYTES].try_into().unwrap();
        let mac = auth_mac(
            SECRET.as_bytes(),
            Role::Acceptor,
            0,
            2,
            1,
            &self.hello.nonce,
            &nonce,
        );
        assert_eq!(
            &challenge[NONCE_BYTES..],
            &mac[..],
            "node 1 proves it knows the secret"
        );
        nonce
    }

    fn ack(s: &mut TcpStream) -> kvr::Result<u64> {
        let (kind, payload) = Self::read(s);
        assert_eq!(kind, KIND_HELLO_ACK);
        Ack::decode(&payload).unwrap().into_result()
    }
}

#[test]
fn replayed_or_forged_handshakes_are_refused_before_any_raft_message() {
    let ports = free_ports(3);
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let mut n1 = Node::new(
        vec![kvr_bin().display().to_string()],
        1,
        &tmp.path().join("n1"),
        &peers.join(","),
        &opts(SECRET),
    );
    n1.start();
    let h = Handshaker {
        addr: format!("127.0.0.1:{}", ports[0]),
        hello: Hello {
            version: PROTOCOL_VERSION,
            cluster_id: 0,
            from: 2,
            to: 1,
            incarnation: 1234,
            nonce: [9; NONCE_BYTES],
            auth: true,
            addr: format!("127.0.0.1:{}", ports[1]),
        },
    };
    wait_until("node 1 listens", Duration::from_secs(10), || {
        TcpStream::connect(&h.addr).is_ok()
    });

    // A genuine handshake, recorded.
    let mut s = h.connect();
    let nonce = h.hello(&mut s);
    let proof = auth_mac(
        SECRET.as_bytes(),
        Role::Dialer,
        0,
        2,
        1,
        &h.hello.nonce,
        &nonce,
    );
    Handshaker::send(&mut s, KIND_PROOF, &proof);
    assert!(
        Handshaker::ack(&mut s).is_ok(),
        "the genuine handshake is accepted"
    );
    drop(s);

    // Replayed on a new connection: node 1 challenges with a fresh nonce; the old proof fails.
    let mut s = h.connect();
    let fresh = h.hello(&mut s);
    assert_ne!(fresh, nonce);
    Handshaker::send(&mut s, KIND_PROOF, &proof);
    refused(Handshaker::ack(&mut s), "authentication failed");

    // A proof made with another secret.
    let mut s = h.connect();
    let nonce = h.hello(&mut s);
    let forged = auth_mac(
        b"not the cluster secret",
        Role::Dialer,
        0,
        2,
        1,
        &h.hello.nonce,
        &nonce,
    );
    Handshaker::send(&mut s, KIND_PROOF, &forged);
    refused(Handshaker::ack(&mut s), "authentication failed");

    // A Raft message in place of the proof is refused, not read.
    let mut s = h.connect();
    let _ = h.hello(&mut s);
    Handshaker::send(&mut s, KIND_RAFT, &[8, 3, 16, 1, 24, 2]);
    refused(Handshaker::ack(&mut s), "expected the proof");

    // A hello that does not offer to authenticate.
    let mut s = h.connect();
    let mut plain = h.hello.clone();
    plain.auth = false;
    Handshaker::send(&mut s, KIND_HELLO, &plain.encode());
    refused(Handshaker::ack(&mut s), "requires a cluster secret");

    let stats = n1.cmd("stats");
    assert!(
        stats.contains("\"received\":0"),
        "no Raft message reached node 1: {stats}"
    );
    let log = std::fs::read_to_string(tmp.path().join("n1.log")).unwrap();
    assert!(
        log.matches("refused a connection").count() >= 4,
        "each refusal is logged:\n{log}"
    );
}

fn refused(r: kvr::Result<u64>, why: &str) {
    match r {
        Err(kvr::Error::Refused(m)) => {
            assert!(m.contains(why), "refused for {m:?}, expected {why:?}")
        }
        other => panic!("expected a refusal ({why}), got {other:?}"),
    }
}
