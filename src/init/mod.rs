//! ztms-init: the appliance PID 1.
pub fn main() { loop { std::thread::park(); } }
