"""Callback plugin (no output): read the option definitions of the connection, shell, become and
lookup plugins a converge uses once, in the controller, before any worker is forked.

ansible-core keeps those definitions per process and a task's worker is a fork of the controller:
unless the controller has them, every worker parses the plugin's documentation again (the ssh
connection's is the largest), about 60 ms a task on a 2-core machine, a third of the idempotent
converge's local overhead. Changes nothing else; enabled by the toolkit's Ansible environment."""

from __future__ import annotations

DOCUMENTATION = r"""
name: warm_plugins
type: aggregate
short_description: Load plugin option definitions once, before the workers fork
description:
  - Loads the connection, shell, become and lookup plugins that the toolkit's plays use, so that
    each forked worker finds their option definitions instead of parsing their documentation.
  - Prints nothing and changes no result. A plugin that is not installed is passed over.
requirements:
  - enabled in callbacks_enabled (the toolkit's ansible.cfg and Ansible environment do)
"""

from ansible.plugins.callback import CallbackBase
from ansible.plugins.loader import become_loader, connection_loader, lookup_loader, shell_loader

# What the toolkit's plays reach for: SSH (fleets), local (the controller's own steps), podman
# (molecule's prepare), sh, sudo/su, and the lookups the roles call on every run.
PLUGINS = (
    (connection_loader, ("ansible.builtin.ssh", "ansible.builtin.local", "containers.podman.podman")),
    (shell_loader, ("ansible.builtin.sh",)),
    (become_loader, ("ansible.builtin.sudo", "ansible.builtin.su")),
    (lookup_loader, ("ansible.builtin.file", "ansible.builtin.template", "ansible.builtin.password",
                     "ansible.builtin.env", "pca.toolkit.data_file")),
)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "pca.toolkit.warm_plugins"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_start(self, playbook) -> None:
        for loader, names in PLUGINS:
            for name in names:
                try:
                    loader.get(name, class_only=True)
                except Exception:  # noqa: BLE001 - a missing or broken plugin is the task's to report
                    continue
