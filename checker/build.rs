//! The checker drives epoll servers and reads /proc: Linux only. Elsewhere,
//! say so once, clearly, instead of a page of compiler errors.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        panic!(
            "\n\n  The epoll course runs on Linux only: its servers use epoll and the checker reads /proc.\n  On macOS or Windows, open the course in its devcontainer (.devcontainer/devcontainer.json,\n  see the README) or in a Linux VM, and run the checker there.\n\n"
        );
    }
}
