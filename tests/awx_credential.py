"""The collection's AWX / AAP credential type, and how AWX turns a credential into a job's input.

AWX renders each injector template of a custom credential type with a sandboxed Jinja2
environment whose namespace holds only the fields the credential has a non-empty value for; a
field left blank is undefined there, and an undefined name renders as an empty string. The env
injectors become environment variables of the job, the extra_vars injectors a YAML file of
extra variables in which every string is tagged !unsafe, so Ansible never templates it.
render_injectors and dump_extra_vars do the same here, so tests see what a real job sees.
"""

import os

import yaml
from jinja2 import sandbox

TESTS = os.path.dirname(os.path.abspath(__file__))
CREDENTIAL_TYPE = os.path.join(os.path.dirname(TESTS), 'extensions', 'awx', 'credential_type.yml')


def load_credential_type(path=CREDENTIAL_TYPE):
    with open(path) as handle:
        return yaml.safe_load(handle)


def render_injectors(credential_type, inputs):
    """(env, extra_vars) a job gets from a credential of this type holding inputs."""
    namespace = dict((name, value) for name, value in inputs.items()
                     if isinstance(value, bool) or value)
    jinja = sandbox.ImmutableSandboxedEnvironment()
    injectors = credential_type.get('injectors', {})
    env = dict((name, jinja.from_string(template).render(**namespace))
               for name, template in injectors.get('env', {}).items())
    extra_vars = dict((name, jinja.from_string(template).render(**namespace))
                      for name, template in injectors.get('extra_vars', {}).items())
    return env, extra_vars


class _UnsafeDumper(yaml.SafeDumper):
    """Writes every string as an !unsafe scalar, the way AWX writes injected extra vars."""


def _unsafe_string(dumper, value):
    return dumper.represent_scalar('!unsafe', value)


_UnsafeDumper.add_representer(str, _unsafe_string)


def dump_extra_vars(extra_vars):
    return yaml.dump(extra_vars, Dumper=_UnsafeDumper, default_flow_style=False)
