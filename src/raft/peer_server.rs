//! The server side of the peer protocol, served on `--listen-peer-urls`.
//!
//! Invariant: every handler answers from this member's raft alone; forwarded proposals and
//! membership changes are carried out only if this member is the leader, otherwise the caller is
//! told who is (it retries there).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::lease::{LeaseCall, LeaseReply};
use super::membership::{MembershipError, MembershipOp};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{Snapshot, SnapshotMeta, Vote};

use super::peer::{decode, encode, PeerError, CLUSTER_ID_HEADER, REMOVED_MEMBER};
use super::snapshot_store::{safe_file_name, sync_dir, SnapData};
use super::{ProposeError, Shared, TypeConfig};
use crate::apply::{Applied, Op};
use crate::proto::oxcdpeerpb::peer_server::Peer;
use crate::proto::oxcdpeerpb::{
    CampaignRequest, CampaignResponse, ClusterInfoRequest, HashKvAt, HashKvReply, Payload,
    PreVoteRequest, PreVoteResponse, ReadIndexRequest, ReadIndexResponse, SnapshotChunk,
};
use crate::types::Member;

/// A snapshot being received: its directory is removed unless it was handed to the install.
struct Receiving {
    dir: std::path::PathBuf,
    file: Option<(String, tokio::fs::File, u64)>,
    bytes: u64,
    keep: bool,
}

impl Drop for Receiving {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Receiving {
    async fn write(&mut self, c: &SnapshotChunk) -> Result<(), Status> {
        use tokio::io::AsyncWriteExt;
        if !safe_file_name(&c.file) {
            return Err(Status::invalid_argument(format!(
                "snapshot file name {:?} is not a plain name",
                c.file
            )));
        }
        if self.file.as_ref().map(|(n, _, _)| n.as_str()) != Some(c.file.as_str()) {
            self.close_file().await?;
            let path = self.dir.join(&c.file);
            let f = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
                .map_err(|e| Status::internal(format!("{}: {e}", path.display())))?;
            self.file = Some((c.file.clone(), f, 0));
        }
        let Some((name, f, len)) = self.file.as_mut() else {
            return Err(Status::internal("no snapshot file open"));
        };
        if c.offset != *len {
            return Err(Status::invalid_argument(format!(
                "snapshot file {name}: chunk at offset {} but {len} bytes written",
                c.offset
            )));
        }
        f.write_all(&c.data)
            .await
            .map_err(|e| Status::internal(format!("{name}: {e}")))?;
        *len += c.data.len() as u64;
        self.bytes += c.data.len() as u64;
        Ok(())
    }

    async fn close_file(&mut self) -> Result<(), Status> {
        if let Some((name, f, _)) = self.file.take() {
            f.sync_all()
                .await
                .map_err(|e| Status::internal(format!("{name}: {e}")))?;
        }
        Ok(())
    }
}

/// The peer service of one member.
#[derive(Clone)]
pub struct PeerService {
    pub(super) shared: Arc<Shared>,
}

fn codec(e: PeerError) -> Status {
    Status::invalid_argument(e.to_string())
}

impl PeerService {
    /// Refuses raft messages from a member that has been removed from the cluster, telling it so
    /// (it then stops, as etcd's removed members do).
    fn refuse_other_cluster<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let theirs = req
            .metadata()
            .get(CLUSTER_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| u64::from_str_radix(v, 16).ok());
        match theirs {
            Some(id) if id != self.shared.cluster_id => {
                tracing::error!(
                    local = %format!("{:x}", self.shared.cluster_id),
                    remote = %format!("{id:x}"),
                    "rejected a raft message from another cluster (cluster ID mismatch)"
                );
                Err(Status::failed_precondition(format!(
                    "cluster ID mismatch: this member belongs to cluster {:x}, the sender to {id:x}",
                    self.shared.cluster_id
                )))
            }
            _ => Ok(()),
        }
    }

    fn refuse_removed(&self, vote: &Vote<u64>) -> Result<(), Status> {
        match vote.leader_id().voted_for() {
            Some(from) if self.shared.state_machine.was_removed(from) => {
                Err(Status::failed_precondition(REMOVED_MEMBER))
            }
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.refuse_other_cluster(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref()).map_err(codec)?;
        self.refuse_removed(&rpc.vote)?;
        let res = self.shared.raft.append_entries(rpc).await;
        if matches!(
            res,
            Ok(openraft::raft::AppendEntriesResponse::Success
                | openraft::raft::AppendEntriesResponse::PartialSuccess(_)
                | openraft::raft::AppendEntriesResponse::Conflict)
        ) {
            self.shared.liveness.leader_contact();
        }
        Ok(Response::new(encode(&res).map_err(codec)?))
    }

    async fn vote(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.refuse_other_cluster(&req)?;
        let rpc: VoteRequest<u64> = decode(req.get_ref()).map_err(codec)?;
        self.refuse_removed(&rpc.vote)?;
        let res = self.shared.raft.vote(rpc).await;
        Ok(Response::new(encode(&res).map_err(codec)?))
    }

    async fn send_snapshot(
        &self,
        req: Request<tonic::Streaming<SnapshotChunk>>,
    ) -> Result<Response<Payload>, Status> {
        self.refuse_other_cluster(&req)?;
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let (vote, meta): (Vote<u64>, SnapshotMeta<u64, Member>) =
            bincode::deserialize(&first.header)
                .map_err(|e| Status::invalid_argument(format!("snapshot header: {e}")))?;
        self.refuse_removed(&vote)?;
        let started = std::time::Instant::now();
        let store = self.shared.state_machine.snapshots().clone();
        let dir = store
            .receive_dir()
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(
            snapshot_id = %meta.snapshot_id,
            last_log_id = ?meta.last_log_id,
            dir = %dir.display(),
            "receiving snapshot"
        );
        let mut recv = Receiving {
            dir,
            file: None,
            bytes: 0,
            keep: false,
        };
        // A snapshot from the current leader is contact with it, chunk by chunk: a long transfer
        // must not look like a silent leader (which would start a pre-vote).
        let from_leader = vote >= self.shared.raft.metrics().borrow().vote;
        let mut chunk = first;
        loop {
            if from_leader {
                self.shared.liveness.leader_contact();
            }
            recv.write(&chunk).await?;
            if chunk.done {
                break;
            }
            chunk = stream
                .message()
                .await?
                .ok_or_else(|| Status::aborted("snapshot stream ended before its last chunk"))?;
        }
        recv.close_file().await?;
        let dir = recv.dir.clone();
        sync_dir(&dir).map_err(|e| Status::internal(e.to_string()))?;
        crate::metrics::get()
            .peer_received_bytes
            .with_label_values(&[&vote
                .leader_id()
                .voted_for()
                .map(|id| format!("{id:x}"))
                .unwrap_or_default()])
            .inc_by(recv.bytes);
        tracing::info!(
            bytes = recv.bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "received snapshot; installing"
        );
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(SnapData { dir: dir.clone() }),
        };
        // Staged before openraft sees it: openraft purges the log the snapshot covers at once,
        // so a crash before the install ends must find the snapshot to finish it on restart.
        // From here the install owns the directory and deletes it once installed.
        store
            .stage(&dir)
            .map_err(|e| Status::internal(e.to_string()))?;
        recv.keep = true;
        let res = self.shared.raft.install_full_snapshot(vote, snapshot).await;
        if res.as_ref().is_ok_and(|r| r.vote == vote) {
            self.shared.liveness.leader_contact();
        }
        // A snapshot the member did not install (an older one, a stale leader) is not needed.
        if let Err(e) = store.unstage(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot drop a snapshot not installed");
        }
        Ok(Response::new(encode(&res).map_err(codec)?))
    }

    async fn forward(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let op: Op = decode(req.get_ref()).map_err(codec)?;
        let res: Result<Applied, ProposeError> = self.shared.write_local(op).await;
        Ok(Response::new(encode(&res).map_err(codec)?))
    }

    async fn forward_batch(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        // An older oxcd's answer, for the rolling-upgrade test.
        crate::error_point!(
            "peer-forward-batch-unimplemented",
            Status::unimplemented("unknown method ForwardBatch")
        );
        let ops: Vec<Op> = decode(req.get_ref()).map_err(codec)?;
        let res = self.shared.write_local_many(ops).await;
        Ok(Response::new(encode(&res).map_err(codec)?))
    }

    async fn read_index(
        &self,
        _req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        let resp = match self.shared.local_read_index().await {
            Ok(index) => ReadIndexResponse {
                index,
                error: String::new(),
            },
            Err(e) => ReadIndexResponse {
                index: 0,
                error: e.to_string(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn change_membership(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let op: MembershipOp = decode(req.get_ref()).map_err(codec)?;
        let res = self.shared.change_membership_local(op).await;
        let res: Result<_, MembershipError> = res;
        Ok(Response::new(encode(&res).map_err(codec)?))
    }

    async fn lease(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.refuse_other_cluster(&req)?;
        let call: LeaseCall = decode(req.get_ref()).map_err(codec)?;
        let res: Result<LeaseReply, ProposeError> = self.shared.lease_local(call).await;
        Ok(Response::new(encode(&res).map_err(codec)?))
    }

    async fn cluster_info(
        &self,
        _req: Request<ClusterInfoRequest>,
    ) -> Result<Response<Payload>, Status> {
        // A member joining asks whichever peer answers first: a follower that has not yet
        // caught up with the leader would hand it a member list from before its `member add`
        // (and its old ID when it was replaced). So the list is read linearizably where a leader
        // can be reached, and as this member knows it otherwise.
        if let Err(e) = self.shared.linearizable_barrier().await {
            tracing::debug!(error = %e, "cluster info without a read barrier");
        }
        let info = self.shared.cluster_info();
        Ok(Response::new(encode(&info).map_err(codec)?))
    }

    async fn hash_kv(&self, req: Request<HashKvAt>) -> Result<Response<HashKvReply>, Status> {
        self.refuse_other_cluster(&req)?;
        let reply = match self
            .shared
            .state_machine
            .hash_kv(req.get_ref().revision)
            .await
        {
            Ok((hash, compact_revision, hash_revision)) => HashKvReply {
                hash,
                compact_revision,
                hash_revision,
                error: String::new(),
            },
            Err(e) => HashKvReply {
                error: e,
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn pre_vote(
        &self,
        req: Request<PreVoteRequest>,
    ) -> Result<Response<PreVoteResponse>, Status> {
        self.refuse_other_cluster(&req)?;
        if self
            .shared
            .state_machine
            .was_removed(req.get_ref().candidate)
        {
            return Err(Status::failed_precondition(REMOVED_MEMBER));
        }
        Ok(Response::new(super::elect::answer(
            &self.shared,
            req.get_ref(),
        )))
    }

    async fn campaign(
        &self,
        _req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        self.shared
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(CampaignResponse {}))
    }
}
