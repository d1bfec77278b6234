"""What the bot and the trainer both need and neither owns: files only this account can read, and settings read
from the environment. Standard library only; it imports nothing of the project, so either side may import it."""
