fn main() {
    std::process::exit(zhubo::cli::main());
}
