"""One module per check, each with `probe(ctx: Context) -> CheckResult`."""
