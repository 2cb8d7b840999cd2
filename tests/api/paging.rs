//! Paged listings (files, users, the audit trail) share one paging contract: a limit from 1 to
//! 1000 and an opaque cursor; anything else is refused the same way on each of them.

use crate::helpers::TestApp;

#[tokio::test]
async fn bad_limits_and_cursors_are_refused_on_every_listing() {
    let app = TestApp::spawn().await;
    let admin = app.admin("pager").await;
    for listing in [
        "/api/v1/files",
        "/api/v1/admin/users",
        "/api/v1/admin/audit",
    ] {
        for (query, want) in [
            ("limit=0", (422, "validation-failed", "limit")),
            ("limit=1001", (422, "validation-failed", "limit")),
            ("limit=abc", (422, "validation-failed", "limit")),
            ("limit=-1", (422, "validation-failed", "limit")),
            ("cursor=not-a-cursor", (400, "bad-request", "")),
            ("cursor=xyz", (400, "bad-request", "")),
            ("cursor=@@@", (400, "bad-request", "")),
        ] {
            let path = format!("{listing}?{query}");
            let got = app.get(&path).as_user(&admin).refusal().await;
            assert_eq!(got, want, "{path}");
        }
    }
}
