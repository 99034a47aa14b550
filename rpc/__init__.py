"""Wire protocol shared by every pyglfs process: framing, messages, connections, errors."""
