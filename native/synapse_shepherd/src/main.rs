//! Entry point of the `synapse-shepherd` executable; see the library docs.

fn main() {
    synapse_shepherd::supervise::run();
    // Exit explicitly: helper threads may still be blocked reading pipes that
    // an escaped descendant holds open, and must not keep the process alive.
    std::process::exit(0);
}
