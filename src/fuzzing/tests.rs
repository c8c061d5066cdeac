//! The suite's short fuzzing run: every target gets random inputs and mutations of valid ones
//! (flipped, inserted and dropped bytes, cut short), from a fixed seed so a failure repeats.
//! The long runs use libFuzzer (`fuzz/`).

use prost::Message;

use super::TARGETS;
use crate::proto::etcdserverpb::{
    compare, request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Valid inputs of each target, to mutate.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let put = PutRequest {
        key: b"a".to_vec(),
        value: b"b".to_vec(),
        ..Default::default()
    };
    let txn = TxnRequest {
        compare: vec![Compare {
            key: b"a".to_vec(),
            target: compare::CompareTarget::Mod as i32,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::ModRevision(3)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put.clone())),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
                ..Default::default()
            })),
        }],
    };
    match target {
        "grpc_requests" => vec![put.encode_to_vec(), txn.encode_to_vec()],
        "gateway_json" => vec![
            br#"{"key":"YQ==","value":"Yg==","lease":"5"}"#.to_vec(),
            br#"{"compare":[{"key":"YQ==","target":"MOD","mod_revision":"3"}],"success":[{"request_put":{"key":"YQ==","value":"Yg=="}}],"failure":[{"request_range":{"key":"YQ=="}}]}"#.to_vec(),
        ],
        "peer_messages" => vec![
            bincode::serialize(&crate::raft::MembershipOp::Remove { id: 5 }).unwrap_or_default(),
            bincode::serialize(&(7u64, vec![1u8, 2, 3], Some(9u64))).unwrap_or_default(),
        ],
        "config_file" => vec![
            b"name: m1\ndata-dir: /tmp/oxcd-fuzz\nlisten-client-urls: http://127.0.0.1:2379\ninitial-cluster: m1=http://127.0.0.1:2380\nsnapshot-count: 100\n".to_vec(),
            b"client-transport-security:\n  cert-file: a\n  key-file: b\nauto-compaction-mode: periodic\nauto-compaction-retention: 1h\n".to_vec(),
        ],
        "snapshot_file" => {
            // A bbolt-like start: page 0 with the meta page's magic and version.
            let mut page = vec![0u8; 8192];
            page[16..20].copy_from_slice(&0xED0C_DAEDu32.to_le_bytes());
            page[20..24].copy_from_slice(&2u32.to_le_bytes());
            page[24..28].copy_from_slice(&4096u32.to_le_bytes());
            vec![page]
        }
        _ => vec![
            crate::types::Revision::new(5, 1).to_bytes().to_vec(),
            b"3.5.0".to_vec(),
        ],
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            _ => {
                let n = rng.below(v.len() + 1);
                v.truncate(n);
            }
        }
    }
    v
}

fn run(name: &str, target: fn(&[u8]), runs: usize) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ name.len() as u64);
    let seeds = seeds(name);
    for seed in &seeds {
        target(seed);
    }
    for i in 0..runs {
        let input = if i % 2 == 0 || seeds.is_empty() {
            let n = rng.below(if name == "snapshot_file" { 12_000 } else { 300 });
            (0..n).map(|_| rng.next() as u8).collect()
        } else {
            let s = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, s)
        };
        target(&input);
    }
}

#[test]
fn every_target_survives_random_and_mutated_input() {
    for (name, target) in TARGETS {
        let runs = match *name {
            "config_file" | "snapshot_file" => 300,
            _ => 3000,
        };
        run(name, *target, runs);
    }
}
