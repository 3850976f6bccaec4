"""Count sessions from the JSONL log: read them back, apply reviews, write the lab report."""
