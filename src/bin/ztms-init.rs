fn main() {
    ztms::init::main();
}
