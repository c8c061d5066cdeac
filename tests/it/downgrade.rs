//! Maintenance.Downgrade side by side with the real etcd 3.5.1 (etcdctl 3.5.1 has no downgrade
//! command, so the RPC is called directly): VALIDATE and the refusals answer as etcd's, field by
//! field; ENABLE and CANCEL, which etcd 3.5.x applies but never answers (its clients time out),
//! are checked on oxcd alone, across members.

use oxcd::proto::etcdserverpb::downgrade_request::DowngradeAction;
use oxcd::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use oxcd::proto::etcdserverpb::DowngradeRequest;
use tonic::Code;

use crate::harness::*;

/// One Downgrade call on `m`: the response's version and whether it had a header, or the error.
async fn downgrade(
    m: &Member,
    action: i32,
    version: &str,
) -> Result<(String, bool), (Code, String)> {
    let mut c = MaintenanceClient::new(m.channel().await);
    c.downgrade(DowngradeRequest {
        action,
        version: version.to_string(),
    })
    .await
    .map(|r| {
        let r = r.into_inner();
        (r.version, r.header.is_some())
    })
    .map_err(|s| (s.code(), s.message().to_string()))
}

const VALIDATE: i32 = DowngradeAction::Validate as i32;
const ENABLE: i32 = DowngradeAction::Enable as i32;
const CANCEL: i32 = DowngradeAction::Cancel as i32;

#[tokio::test]
async fn downgrade_answers_as_etcds() {
    let etcd = Cluster::start_with(Kind::Etcd, 1, &[]).await;
    let oxcd = Cluster::start(3).await;
    let ok = Ok(("3.5.0".to_string(), true));
    let err = |code, msg: &str| Err((code, msg.to_string()));
    let cases = [
        (VALIDATE, "3.4", ok.clone()),
        (VALIDATE, "3.4.9", ok.clone()),
        (VALIDATE, "3.4.0-rc.1", ok.clone()),
        (
            VALIDATE,
            "v3.4",
            err(
                Code::InvalidArgument,
                "etcdserver: wrong downgrade target version format",
            ),
        ),
        (
            VALIDATE,
            "3.4-rc.1",
            err(
                Code::InvalidArgument,
                "etcdserver: wrong downgrade target version format",
            ),
        ),
        (
            VALIDATE,
            "3.3",
            err(
                Code::InvalidArgument,
                "etcdserver: invalid downgrade target version",
            ),
        ),
        (
            VALIDATE,
            "3.5",
            err(
                Code::InvalidArgument,
                "etcdserver: invalid downgrade target version",
            ),
        ),
        (
            ENABLE,
            "4.4",
            err(
                Code::InvalidArgument,
                "etcdserver: invalid downgrade target version",
            ),
        ),
        (
            CANCEL,
            "",
            err(
                Code::FailedPrecondition,
                "etcdserver: no inflight downgrade job",
            ),
        ),
        (7, "3.4", err(Code::Unknown, "etcdserver: unknown method")),
    ];
    for (action, version, want) in &cases {
        let e = downgrade(&etcd.members[0], *action, version).await;
        let o = downgrade(&oxcd.members[0], *action, version).await;
        assert_eq!(&e, want, "etcd: action {action} {version:?}");
        assert_eq!(&o, want, "oxcd: action {action} {version:?}");
    }

    // ENABLE on one member is seen by the others; a second job, or a wrong target, is refused;
    // CANCEL ends it once.
    let (a, b) = (&oxcd.members[0], &oxcd.members[1]);
    assert_eq!(downgrade(a, ENABLE, "3.4").await, ok);
    let in_progress = err(
        Code::FailedPrecondition,
        "etcdserver: cluster has a downgrade job in progress",
    );
    assert_eq!(downgrade(b, VALIDATE, "3.4").await, in_progress);
    assert_eq!(downgrade(b, ENABLE, "3.4.2").await, in_progress);
    assert_eq!(
        downgrade(b, ENABLE, "3.3").await,
        err(
            Code::InvalidArgument,
            "etcdserver: invalid downgrade target version"
        )
    );
    assert_eq!(downgrade(b, CANCEL, "").await, ok);
    assert_eq!(
        downgrade(a, CANCEL, "").await,
        err(
            Code::FailedPrecondition,
            "etcdserver: no inflight downgrade job"
        )
    );
    assert_eq!(downgrade(a, VALIDATE, "3.4").await, ok);
    // The gateway serves it too.
    let r = crate::ops::curl(
        &format!("http://{}/v3/maintenance/downgrade", a.endpoint()),
        &[
            "-X",
            "POST",
            "-d",
            r#"{"action":"VALIDATE","version":"3.4"}"#,
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("\"version\":\"3.5.0\""), "{r:?}");
}
