"""The ingress's copy of the alias map (``DirectoryView``) answers exactly what the directory would.

The ``ModelDirectory`` runs as a plain class against the stack's real MLflow registry (versions
are metadata only: the directory never reads artifacts). The view calls it through the same
``handle.snapshot.remote(...)`` shape a Serve handle has, in process. The Serve-level behaviour
(hot swap under load, reload, deletion and archival over HTTP) is in ``test_serve.py``.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from infra.errors import NotFound
from infra.settings import Settings
from services.serving.model_directory import DirectoryView, ModelDirectory

pytestmark = pytest.mark.stack
NAME = "gan-directory-view-test"


def _in_process(directory) -> SimpleNamespace:
    """The directory behind a handle-shaped object: ``handle.snapshot.remote(seen)`` → awaitable."""
    return SimpleNamespace(snapshot=SimpleNamespace(remote=directory.snapshot))


@pytest.fixture(scope="module")
def versions(stack: Settings) -> list[str]:
    from infra.tracking import configure

    client = configure(stack).MlflowClient()
    client.create_registered_model(NAME)
    made = [client.create_model_version(NAME, source=f"s3://nowhere/{i}").version for i in range(3)]
    client.set_registered_model_alias(NAME, "champion", made[0])
    return [str(v) for v in made]


def test_the_view_answers_what_the_directory_resolved_and_follows_its_changes(stack, versions) -> None:
    from infra.tracking import configure

    async def scenario() -> None:
        directory = ModelDirectory.func_or_class(settings=stack)
        view = DirectoryView(_in_process(directory), refresh_s=60)
        champion, pinned = f"{NAME}@champion", f"{NAME}/{versions[1]}"
        await view.pull()
        assert view.cached(champion) is None  # nothing resolved yet: the directory answers
        first, second = directory._lookup(champion), directory._lookup(pinned)
        await view.pull()
        assert view.cached(champion) == first and first.version == versions[0]
        assert view.cached(f"models:/{NAME}@champion") == first  # the same reference, other spelling
        assert view.cached(pinned) == second and view.cached("not a model ref!") is None
        token = view._token
        assert await directory.snapshot(token) is None  # nothing moved: nothing sent

        client = configure(stack).MlflowClient()
        client.set_registered_model_alias(NAME, "champion", versions[2])  # a promotion
        assert view.cached(champion).version == versions[0]  # until the directory has seen it
        directory._refresh()  # its poll (or a reload)
        await view.pull()
        assert view._token[1] > token[1]
        assert directory._lookup(champion).version == versions[2]
        await view.pull()
        assert view.cached(champion).version == versions[2]

        client.delete_model_version(NAME, versions[1])  # a deleted version leaves the view …
        directory._refresh()
        await view.pull()
        assert view.cached(pinned) is None
        gone = directory._lookup(pinned)  # … so the directory answers it, with its 404
        assert isinstance(gone, NotFound)

        newer = view._token
        view._token = (newer[0], newer[1] + 5)  # a pull that crossed with a newer one is not applied
        view._refs = {}
        await view.pull()
        assert view._refs == {}
        restarted = ModelDirectory.func_or_class(settings=stack)  # a restarted directory: a new id
        view._directory = _in_process(restarted)
        await view.pull()
        assert view._token[0] != newer[0] and view.cached(champion) is None  # its map is empty, and so is ours

    asyncio.run(scenario())
