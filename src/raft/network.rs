//! The peer network: how this member reaches the others.
//!
//! Invariant: a one-member group never sends a peer RPC. Multi-member replication (gRPC between
//! members on the peer URLs) is not built yet, so every RPC here reports the peer unreachable with
//! that reason, and start-up refuses an `--initial-cluster` with more than one member.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::TypeConfig;
use crate::types::Member;

/// Builds a client per peer.
#[derive(Debug, Clone, Default)]
pub struct PeerNetwork;

/// A client for one peer.
#[derive(Debug, Clone)]
pub struct PeerClient {
    target: u64,
}

impl PeerClient {
    fn unreachable(&self) -> Unreachable {
        Unreachable::new(&std::io::Error::other(format!(
            "member {:x}: peer replication is not available in this build (single-member only)",
            self.target
        )))
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, _node: &Member) -> PeerClient {
        PeerClient { target }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }
}
