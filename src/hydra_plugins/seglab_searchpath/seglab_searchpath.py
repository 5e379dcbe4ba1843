"""Hydra search-path plugin: the user's config directories (`SEGLAB_CONFIG_PATH`, and
`--config-dir` through `seglab.cli`) come before seglab's packaged configs, so a user's
`experiment/my_roads.yaml` is selectable beside the built-in options and a file of the
same name as a packaged one replaces it. Hydra finds this module by scanning the
`hydra_plugins` namespace package."""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.plugins.search_path_plugin import SearchPathPlugin

from seglab.config import CONFIG_DIR, user_config_dirs


class SeglabSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        # Only for seglab's own commands: a search path whose primary dir is seglab's.
        if search_path.find_first_match(SearchPathQuery(path=str(CONFIG_DIR))) == -1:
            return
        for path in user_config_dirs():
            search_path.prepend(
                provider="seglab-user", path=f"file://{path}", anchor=SearchPathQuery("main")
            )
