//! byol-agent: PID 1 of the initramfs and the image engine (issues "Image engine" and
//! "machine side"). Nothing here yet but the entry point.

fn main() {
    eprintln!("byol-agent: not implemented yet (see the open issues)");
    std::process::exit(2);
}
