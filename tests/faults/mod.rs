//! Fault-injection harness: replicas in separate processes, proxies on every link, clients
//! recording histories, a seeded nemesis, and checks (porcupine linearizability, lost
//! acknowledged writes, convergence). See README.md in this folder.

#![allow(dead_code)]

pub mod checker;
pub mod cluster;
pub mod disk;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod rng;
pub mod schedule;
pub mod workload;
