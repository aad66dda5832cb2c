"""Stream processors: validate, dedupe, price, detect, and write ClickHouse."""
