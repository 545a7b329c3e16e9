"""Payment channels: one package per channel, and the channel simulator."""
