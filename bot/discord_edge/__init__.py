"""The Discord edge written once: replies and the error tree, durable buttons, views, role checks, clipping.

It lives under bot/ (not cogs/) because the bot class wires the error tree, and bot/client.py must not import cogs/:
the cogs import this package, never the other way round. Services never import it (they never import discord).
"""
