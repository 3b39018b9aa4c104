//! Upgrades: servers starting together migrate one after the other (an
//! advisory lock), and `serve --no-migrate` refuses a schema behind it.

use propass_server::db;

use crate::helpers::*;

fn serve_no_migrate(url: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_propass-server"))
        .args(["serve", "--no-migrate", "--bind", "127.0.0.1:0"])
        .env_remove("PROPASS_CONFIG")
        .env("DATABASE_URL", url)
        .env("PROPASS_JWT_SECRET", SECRET)
        .output()
        .unwrap()
}

#[tokio::test]
async fn servers_starting_together_migrate_once_and_no_migrate_waits_for_it() {
    let database = TestDatabase::create("propass_test").await;
    let url = database.url().to_owned();

    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || serve_no_migrate(&url)
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("run `propass-server migrate` first"), "{err}");

    let migrate = |url: String| tokio::task::spawn_blocking(move || db::run_migrations(&url));
    let (a, b) = (migrate(url.clone()), migrate(url.clone()));
    let a = a.await.unwrap().expect("the first migrates");
    let b = b
        .await
        .unwrap()
        .expect("the second waits, then finds nothing to do");
    let total = propass_server::db::pending_migrations(&url).unwrap();
    assert!(total.is_empty(), "{total:?}");
    assert_eq!(
        a.len().min(b.len()),
        0,
        "one of them applied everything: {a:?} / {b:?}"
    );
    assert!(a.len().max(b.len()) >= 10);
}
