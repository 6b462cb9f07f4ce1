//! Attacks on authentication and its files, kept as regressions: the
//! server secret's file (`auth.secret_file`) is made safely when servers
//! start together and is never read when others could read it or when it
//! is a link; guesses and their answers (see also `guessing`).

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Barrier};

use mailbag::auth::secret::ServerSecret;

#[test]
fn servers_started_together_all_get_the_one_secret() {
    // Each round: a fresh directory, eight first starts at once. Every
    // one must get a secret (none may read a half-written file), and all
    // the same one.
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailbag.secret");
        let barrier = Arc::new(Barrier::new(8));
        let starts: Vec<_> = (0..8)
            .map(|_| {
                let (path, barrier) = (path.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    ServerSecret::load_or_create(&path).map(|s| s.scram_salt("probe"))
                })
            })
            .collect();
        let salts: Vec<_> = starts
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("round {round}: a concurrent first start failed: {e:#}"));
        assert!(salts.windows(2).all(|w| w[0] == w[1]), "round {round}");
        // Nothing but the secret is left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("mailbag.secret")]);
    }
}

#[test]
fn a_secret_others_may_read_or_a_link_to_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailbag.secret");
    let made = ServerSecret::load_or_create(&path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Copied with a careless umask: group and others may read it.
    for mode in [0o644, 0o640, 0o604, 0o620] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = ServerSecret::load_or_create(&path).unwrap_err();
        let text = format!("{e:#} {:?}", std::error::Error::source(&e));
        assert!(text.contains("chmod 600"), "{mode:o}: {text}");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let again = ServerSecret::load_or_create(&path).unwrap();
    assert_eq!(made.scram_salt("x"), again.scram_salt("x"));

    // A link at the path, even to a good secret, is not followed, and
    // nothing is created through it.
    let link = dir.path().join("link.secret");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let e = ServerSecret::load_or_create(&link).unwrap_err();
    assert!(format!("{:?}", std::error::Error::source(&e)).contains("symbolic link"));
    let dangling = dir.path().join("dangling.secret");
    let target = dir.path().join("made-through-the-link");
    std::os::unix::fs::symlink(&target, &dangling).unwrap();
    assert!(ServerSecret::load_or_create(&dangling).is_err());
    assert!(!target.exists());

    // A FIFO in its place is refused at once instead of hanging start-up.
    let fifo = dir.path().join("fifo.secret");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert!(ServerSecret::load_or_create(&fifo).is_err());
}
