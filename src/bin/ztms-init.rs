//! ztms-init, the appliance's PID 1. See `ztms::init`.

fn main() {
    ztms::init::main();
}
