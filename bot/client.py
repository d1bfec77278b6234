"""ClassroomBot: wires configuration, storage, the backend gateway and services once, then loads the cogs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.config import Settings
from bot.discord_edge.access import Classroom
from bot.discord_edge.buttons import ButtonCooldowns, Cooled
from bot.discord_edge.replies import ErrorTree
from bot.i18n import catalog, locale_of
from bot.openai_gateway import FineTuningGateway
from bot.services.chat import ChatService
from bot.services.chat_limits import ChatLimits
from bot.services.dataset_check import DatasetCheckService
from bot.services.datasets import DatasetService
from bot.services.door import ModelDoor
from bot.services.finetune import FineTuneService
from bot.services.evaluation import EvaluationService
from bot.services.governance import Governance
from bot.services.groups import GroupService
from bot.services.lessons import LessonLibrary
from bot.services.monitor import MonitorService
from bot.services.ratelimit import EditBudget
from bot.services.starts import StartService
from bot.services.wordlist import WordListService
from bot.services.workers import CpuWorkers
from bot.trainer_process import TrainerProcess
from storage.chats import ChatRepository
from storage.datasets import DatasetRepository
from storage.database import Database
from storage.governance import GovernanceRepository
from storage.groups import GroupRepository
from storage.jobs import JobRepository
from storage.meta import MetaRepository
from storage.rates import RateRepository
from storage.starts import StartRepository
from storage.wordlist import WordListRepository

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.finetune", "cogs.job_monitor", "cogs.chat", "cogs.classroom", "cogs.approvals", "cogs.lesson",
              "cogs.dataset", "cogs.groups", "cogs.flagged")
_TREE_HASH_KEY = "command_tree_hash"


class CatalogTranslator(app_commands.Translator):
    """Localizes command names' descriptions from the catalog: a locale_str's key names the entry."""

    async def translate(
        self, string: app_commands.locale_str, locale: discord.Locale, context: app_commands.TranslationContextTypes
    ) -> str | None:
        """Korean descriptions for Korean clients; None keeps the English default."""
        key = string.extras.get("key")
        if not key or locale_of(locale) == "en":
            return None
        text = catalog().raw(key, locale_of(locale))
        return text if text and text != string.message else None


class ClassroomBot(commands.Bot):
    """The classroom fine-tuning bot."""

    db: Database
    gateway: FineTuningGateway
    jobs: JobRepository
    meta: MetaRepository
    finetune: FineTuneService
    starts: StartService
    monitor: MonitorService
    workers: CpuWorkers
    edit_budget: EditBudget
    chat: ChatService
    chat_limits: ChatLimits
    door: ModelDoor
    governance: Governance
    groups: GroupService
    lessons: LessonLibrary
    evaluation: EvaluationService
    datasets: DatasetService
    trainer: TrainerProcess | None = None  # the school's own trainer, when the bot runs it
    _shutdown: asyncio.Task[None] | None = None

    def __init__(self, settings: Settings, *, guild_ready_timeout: float = 2.0) -> None:
        intents = discord.Intents.default()
        intents.message_content = True  # chat threads read what students write
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=ErrorTree,
            help_command=None,
            guild_ready_timeout=guild_ready_timeout,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True),
        )
        self.settings = settings
        self.button_cooldowns = ButtonCooldowns()
        _point_discord_at(settings)

    async def setup_hook(self) -> None:
        """Open storage and the backend, build the services, load the cogs, sync commands if they changed."""
        self.db = await Database.open(self.settings.database_path)
        api_key, base_url = self.settings.openai_api_key, self.settings.openai_base_url
        if self.settings.backend == "trainer":
            # No backend configured: the school's own trainer, run beside the bot (it still loads models while the
            # bot connects; until it listens, requests are answered "busy, try again in a moment").
            self.trainer = TrainerProcess(data_dir=self.settings.trainer_data_dir, api_key=self.settings.trainer_api_key)
            api_key = await self.trainer.start()
            base_url = self.trainer.base_url
        log.info("Fine-tuning backend: %s", {"trainer": "the school's own trainer", "openai": "OpenAI",
                                              "compatible": "the server at OPENAI_BASE_URL"}[self.settings.backend])
        # The school's trainer is reached only through its private socket (BACKEND_SOCKET: a trainer or tunnel the
        # teacher runs): the key never goes to a TCP port that another account could have taken meanwhile.
        self.gateway = FineTuningGateway.create(api_key=api_key, base_url=base_url,
                                                unix_socket=self.trainer.socket_path if self.trainer
                                                else self.settings.backend_socket)
        self.jobs = JobRepository(self.db)
        self.meta = MetaRepository(self.db)
        self.workers = CpuWorkers(self.settings.worker_processes)
        self.edit_budget = EditBudget()  # chat replies and progress cards share each channel's edit limit
        self.wordlist = WordListService(WordListRepository(self.db))
        self.governance = Governance.create(
            GovernanceRepository(self.db), self.jobs, self.gateway, self_hosted=self.settings.self_hosted,
            free_backend=self.settings.free_backend, wordlist=self.wordlist, prices_file=self.settings.prices_file,
        )
        self.finetune = FineTuneService(self.settings, self.jobs, self.gateway)
        self.groups = GroupService(GroupRepository(self.db), self.jobs)
        self.monitor = MonitorService(self.jobs, self.gateway, self.workers, on_end=self.governance.policy.settle,
                                      on_adopt=self.governance.policy.job_recorded)
        self.starts = StartService(
            self.settings, StartRepository(self.db), self.jobs, self.gateway,
            DatasetCheckService(max_bytes=self.settings.max_training_file_bytes, prices_file=self.settings.prices_file),
            self.workers,
            self.governance.policy, self.monitor.adopt_unrecorded, self.finetune.base_models, groups=self.groups,
        )
        self.chat_limits = ChatLimits(
            self.governance.repo, self.governance.roles, self.finetune.base_models,
            free_backend=self.settings.free_backend, prices=self.governance.prices, rates=RateRepository(self.db),
        )
        # The one door every request to a model passes (chat, /ask, /compare, /evaluate, lessons).
        self.door = ModelDoor(self.gateway, self.chat_limits, self.governance.moderation.moderate_chat)
        self.chat = ChatService(
            ChatRepository(self.db), self.jobs, self.gateway, moderate=self.governance.moderation.moderate_chat,
            limits=self.chat_limits, door=self.door,
            edit_budget=self.edit_budget,
        )
        # Chat answers a stopped bot left held are charged their worst case, so the budget never under-counts.
        await self.chat_limits.settle_stale()
        self.lessons = LessonLibrary()
        self.evaluation = EvaluationService(self.gateway, self.chat, self.lessons,
                                            moderate=self.governance.moderation.moderate_texts)
        self.datasets = DatasetService(DatasetRepository(self.db),
                                       DatasetCheckService(prices_file=self.settings.prices_file),
                                       moderate=self.governance.moderation.moderate_texts)
        await self.tree.set_translator(CatalogTranslator())
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.sync_commands_if_changed()

    async def sync_commands_if_changed(self) -> None:
        """Sync the command tree only when its definition changed, so a restart costs no sync."""
        guild = discord.Object(self.settings.dev_guild_id) if self.settings.dev_guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        payload = [await command.get_translated_payload(self.tree, CatalogTranslator())
                   for command in self.tree.get_commands()]
        digest = hashlib.sha256(
            json.dumps([payload, self.settings.dev_guild_id], sort_keys=True, default=str).encode()
        ).hexdigest()
        if await self.meta.get(_TREE_HASH_KEY) == digest:
            log.info("Command tree unchanged; not syncing")
            return
        try:
            synced = await self.tree.sync(guild=guild)
        except discord.HTTPException as exc:
            # Old commands keep working; the hash is not stored, so the next start tries again.
            log.warning("Could not sync commands (HTTP %s); trying again at the next start", exc.status)
            return
        await self.meta.set(_TREE_HASH_KEY, digest)
        log.info("Synced %d commands (%s)", len(synced), f"guild {guild.id}" if guild else "global")

    def channel_locale(self, guild_id: int | None) -> str:
        """The language of posts in a server's channels: the server's preferred locale."""
        guild = self.get_guild(guild_id) if guild_id else None
        return locale_of(guild.preferred_locale if guild else None)

    async def on_ready(self) -> None:
        """Log who we are once connected."""
        log.info("Ready as %s in %d servers", self.user, len(self.guilds))

    async def close(self) -> None:
        """Shut down once, whoever asks first (SIGTERM's handler and the end of `async with bot` both do)."""
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._close_everything(), name="bot shutdown")
        # Shielded: a caller cancelled half-way (asyncio.run's clean-up) must not leave the database thread open,
        # which would keep the process alive after it was asked to stop.
        await asyncio.shield(self._shutdown)

    async def __aexit__(self, *exc_info: object) -> None:
        # discord.py's own __aexit__ waits only for its part of a close already begun (SIGTERM's handler): the rest,
        # the trainer child included, would be cancelled half-way by asyncio.run.
        await self.close()

    async def _close_everything(self) -> None:
        """Stop the cogs, then the workers, the backend client, the database and the school's trainer."""
        await super().close()
        if hasattr(self, "starts"):
            self.starts.close()
        if hasattr(self, "workers"):
            self.workers.close()
        if hasattr(self, "gateway"):
            await self.gateway.close()
        if hasattr(self, "db"):
            await self.db.close()
        if self.trainer is not None:
            await self.trainer.stop()


def _is_a_classroom(bot: ClassroomBot) -> Classroom:
    # Never called: mypy checks here that the bot offers all the edge reaches of it (discord_edge.access).
    return bot


def _has_button_cooldowns(bot: ClassroomBot) -> Cooled:
    # Never called: mypy checks here that durable buttons find their cooldowns on the bot.
    return bot


def _point_discord_at(settings: Settings) -> None:
    # discord.py has no base-URL option: these class attributes are where it reads the REST base and gateway.
    if settings.discord_api_base_url:
        discord.http.Route.BASE = settings.discord_api_base_url
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)
