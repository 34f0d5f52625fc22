"""pveschema: check recorded API requests and responses against Proxmox VE's own API schema.

The schemas are Proxmox's API-viewer data, cut down by someone else to what a rebalancer
needs: ../shared/pve-schema/pve-<version>.json beside the repository (read its README.md).
Each has `paths` (every path template of that version and its methods) and `endpoints`
(the full description of up to 28 endpoints). Standard library only, no third-party code.

    schema = pveschema.load('9.0')
    pveschema.check_request(schema, {'method': 'POST', 'path': '/nodes/pve1/qemu/101/migrate',
                                     'params': {'target': 'pve2', 'online': '1'},
                                     'auth': 'token', 'csrf': False})   # -> [] or problems
    pveschema.check_response(schema, 'GET', '/nodes/pve1/qemu/101/migrate', data)
    pveschema.described(schema, 'GET', '/cluster/replication')   # coverage

A request to a path and method that exist but are not described in `endpoints` is only
checked for path, method and CSRF; described() tells callers which those are.

How the rules follow Proxmox (none of its code is copied; citations name file and function):
- parameters: pve-common src/PVE/JSONSchema.pm `check_prop`/`check_object`/`check_type`
  (booleans only '0'/'1', patterns anchored, formats, additionalProperties 0), called by
  src/PVE/RESTHandler.pm `handle` on the request's parameters and the path's together;
- formats: the same file's `check_format` (name-list / name-opt) and the registered
  checks named at each entry of FORMATS below;
- authentication and CSRF: pve-manager PVE/HTTPServer.pm `auth_handler` (a ticket-auth
  write needs the CSRFPreventionToken header; POST /access/ticket needs no authentication)
  and `rest_handler` (merges the path's parameters in, refusing one given twice).

Supplementary descriptions, tests/pveschema-extra/<version>.json: the extracts describe
28 endpoints at most, and PRS calls more (GET /cluster/replication, GET
/access/permissions, GET /nodes/{node}/lxc/{vmid}/config, and for its run lock POST /pools
and GET, PUT, DELETE /pools/{poolid}). They were taken once, by hand, from pve-docs
`api-viewer/apidata.js` at the commit in each file's `meta` (the README's commit for that
version; for 9.2, which has none, the newest pve-docs master commit, whose schema is 9.1.3's):
walk the JavaScript array's nested nodes (`path`, `info` per method, `children`), keep each
wanted endpoint's `info[METHOD]` as it is, except that descriptions longer than 200 characters
are dropped, and write {meta, endpoints}; the container config's `returns` (its whole
config schema) is trimmed to a bare object. load() adds them where the extract has no entry.
"""

import functools
import json
import os
import re

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
SCHEMA_DIR = os.path.join(REPO, '..', 'shared', 'pve-schema')
EXTRA_DIR = os.path.join(TESTS_DIR, 'pveschema-extra')
VERSIONS = ('8.0', '8.4', '9.0', '9.1', '9.2')

# pveproxy lets these through without authentication, hence without a CSRF check
# (pve-manager PVE/HTTPServer.pm `auth_handler`); only the one PRS calls is listed.
NO_CSRF = {('POST', '/access/ticket')}


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------
def versions():
    return list(VERSIONS)


@functools.lru_cache(maxsize=None)
def load(version):
    """The schema of one version, with tests/pveschema-extra/<version>.json merged in.
    Cached and shared between callers: read it, do not change it."""
    if version not in VERSIONS:
        raise ValueError('no schema for PVE %r (have %s)' % (version, ', '.join(VERSIONS)))
    schema = _read_json(os.path.join(SCHEMA_DIR, 'pve-%s.json' % version))
    extra_file = os.path.join(EXTRA_DIR, '%s.json' % version)
    if os.path.exists(extra_file):
        extra = _read_json(extra_file)
        for key, info in extra['endpoints'].items():
            schema['endpoints'].setdefault(key, info)   # the shared extract wins
        schema['meta']['extra'] = extra.get('meta', {})
    return schema


def _read_json(filename):
    with open(filename, encoding='utf-8') as handle:
        return json.load(handle)


def described(schema, method, template):
    return '%s %s' % (method.upper(), template) in schema['endpoints']


# --------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------
def _segments(path):
    # Empty segments do not count: Proxmox's handler lookup splits on runs of '/'.
    return [s for s in path.split('/') if s]


def _is_param(segment):
    return segment.startswith('{') and segment.endswith('}')


def match_path(schema, path):
    """(template, {name: value}) of the template that matches `path`, or None.

    A parameter matches one segment. Where several templates match, the one with more
    literal segments wins, then the one whose literals come first."""
    parts = _segments(path)
    best = None
    for template in schema['paths']:
        pattern = _segments(template)
        params = _bind(pattern, parts)
        if params is None:
            continue
        literal = tuple(not _is_param(s) for s in pattern)
        rank = (sum(literal), literal)
        if best is None or rank > best[0]:
            best = (rank, template, params)
    return None if best is None else (best[1], best[2])


def _bind(pattern, parts):
    if len(pattern) != len(parts):
        return None
    params = {}
    for want, got in zip(pattern, parts, strict=True):
        if _is_param(want):
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params


def _locate(schema, method, path):
    """(template, path params, problem) for a method and a concrete path."""
    matched = match_path(schema, path)
    if matched is None:
        return None, None, '%s %s: unknown path' % (method, path)
    template, params = matched
    allowed = schema['paths'][template]
    if method not in allowed:
        return template, params, '%s %s: method not allowed (the path has %s)' % (
            method, template, ', '.join(allowed) or 'no methods')
    return template, params, None


# --------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------
def check_request(schema, rec):
    """Problems with one recorded request (empty list: Proxmox would accept it)."""
    method = rec['method'].upper()
    template, path_params, problem = _locate(schema, method, rec['path'])
    if problem:
        return [problem]
    problems = _check_csrf(method, template, rec)
    info = schema['endpoints'].get('%s %s' % (method, template))
    if info is not None:
        problems += _check_auth(info, rec)
        problems += _check_params(info.get('parameters') or {}, path_params, rec.get('params') or {})
    return ['%s %s: %s' % (method, template, p) for p in problems]


def _check_csrf(method, template, rec):
    # pveproxy checks CSRF before it looks up the endpoint, so this holds for every path.
    if method == 'GET' or rec.get('auth') != 'ticket' or rec.get('csrf'):
        return []
    if (method, template) in NO_CSRF:
        return []
    return ['ticket-authenticated %s without a CSRFPreventionToken header' % method]


def _check_auth(info, rec):
    auth = rec.get('auth')
    if auth == 'none' and (info.get('permissions') or {}).get('user') != 'world':
        return ['needs authentication, called without']
    if auth == 'token' and not info.get('allowtoken'):
        return ['API tokens may not call this endpoint (allowtoken 0)']
    return []


def _check_params(pschema, path_params, params):
    props = pschema.get('properties') or {}
    problems = ["parameter '%s' repeats the path's" % n for n in sorted(params) if n in path_params]
    # additionalProperties absent means "anything goes"; only an explicit 0 rejects.
    if 'additionalProperties' in pschema and not pschema['additionalProperties']:
        problems += ["undeclared parameter '%s'" % n for n in sorted(params)
                     if n not in props and n not in path_params]
    values = {name: str(value) for name, value in {**params, **path_params}.items()}
    for name, prop in sorted(props.items()):
        if name not in values:
            if not prop.get('optional'):
                problems.append("missing parameter '%s'" % name)
            continue
        problems += ["parameter '%s': %s" % (name, p) for p in _check_value(prop, values[name])]
        problems += _check_requires(name, prop, values)
    return problems


def _check_requires(name, prop, values):
    needed = prop.get('requires')
    if isinstance(needed, str) and needed not in values:
        return ["parameter '%s' requires '%s'" % (name, needed)]
    return []


def _check_value(prop, value):
    """At most one problem, as JSONSchema.pm `check_prop` stops at the first."""
    if not _type_ok_text(prop.get('type'), value):
        return ["type check ('%s') failed - got '%s'" % (prop.get('type'), value)]
    for check in (_check_format_of, _check_pattern, _check_length, _check_range, _check_enum):
        problem = check(prop, value)
        if problem:
            return [problem]
    return []


# Numbers as JSONSchema.pm `is_number` and `is_integer` see them.
NUMBER_RE = re.compile(r'[+-]?(\d+\.\d+|\d+\.|\.\d+|\d+)([eE][+-]?\d+)?', re.ASCII)
INTEGER_RE = re.compile(r'[+-]?\d+', re.ASCII)


def _type_ok_text(kind, value):
    """Type check of a form or query value (always a string), after `check_type`."""
    if isinstance(kind, list):
        return any(_type_ok_text(k, value) for k in kind)
    if kind == 'boolean':
        return value in ('0', '1')   # not 'true', not 'True': Proxmox rejects those
    if kind == 'integer':
        return INTEGER_RE.fullmatch(value) is not None
    if kind == 'number':
        return NUMBER_RE.fullmatch(value) is not None
    return True   # strings, and types a form value cannot express


def _check_pattern(prop, value):
    regex = _perl_regex(prop.get('pattern'))
    if regex is not None and not regex.match(value):
        return 'value does not match the regex pattern'
    return None


@functools.lru_cache(maxsize=None)
def _perl_regex(pattern):
    """Python's reading of Proxmox's `m/^$pattern$/`, or None when there is nothing to check.

    Like Perl, the pattern is pasted between ^ and $ without a group of its own. Perl
    stringifies qr// as (?^flags:...), which Python spells (?flags:...)."""
    if not pattern:
        return None
    text = re.sub(r'\(\?\^(\w*):', lambda m: '(?%s:' % m.group(1), pattern)
    try:
        return re.compile('^' + text + '$')
    except re.error:
        return None   # a Perl-only construct: not checked rather than wrongly rejected


def _check_length(prop, value):
    if 'maxLength' in prop and len(value) > int(prop['maxLength']):
        return 'value may only be %s characters long' % prop['maxLength']
    if 'minLength' in prop and len(value) < int(prop['minLength']):
        return 'value must be at least %s characters long' % prop['minLength']
    return None


def _check_range(prop, value):
    if not NUMBER_RE.fullmatch(value):
        return None   # Proxmox compares only values that look like numbers
    number = float(value)
    if 'maximum' in prop and number > float(prop['maximum']):
        return 'value must have a maximum value of %s' % prop['maximum']
    if 'minimum' in prop and number < float(prop['minimum']):
        return 'value must have a minimum value of %s' % prop['minimum']
    return None


def _check_enum(prop, value):
    if 'enum' in prop and value not in [str(e) for e in prop['enum']]:
        return "value '%s' is not one of %s" % (value, ', '.join(str(e) for e in prop['enum']))
    return None


# --------------------------------------------------------------------------------------
# Formats: the few the endpoints PRS uses declare. Unknown formats are not checked.
# --------------------------------------------------------------------------------------
def _regex_format(regex, message):
    compiled = re.compile(regex)
    return lambda value: None if compiled.fullmatch(value) else message


def _storage_id(value):
    # pve-common JSONSchema.pm `parse_storage_id` -> `parse_id`
    if len(value) < 2:
        return "storage ID '%s' cannot be shorter than 2 characters" % value
    if not re.fullmatch(r'[a-z][a-z0-9\-_.]*[a-z0-9]', value, re.I):
        return "storage ID '%s' contains illegal characters" % value
    return None


def _storage_pair(value):
    # pve-common JSONSchema.pm `verify_storagepair` -> `parse_idmap` on one entry:
    # '1' (each storage to itself), 'source:target', or one default target.
    if value == '1':
        return None
    ids = value.split(':') if re.fullmatch(r'[^:]+:[^:]+', value) else [value]
    for storage in ids:
        problem = _storage_id(storage)
        if problem:
            return "entry '%s' contains invalid ID - %s" % (value, problem)
    return None


FORMATS = {
    # pve-common src/PVE/JSONSchema.pm `pve_verify_node_name`
    'pve-node': _regex_format(r'[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?',
                              'value does not look like a valid node name'),
    # ... `pve_verify_vmid`
    'pve-vmid': _regex_format(r'[1-9][0-9]{2,8}', 'value does not look like a valid VM ID'),
    # ... `pve_verify_configid`
    'pve-configid': _regex_format(r'(?i)[a-z][a-z0-9_-]+', 'invalid configuration ID'),
    # ... `verify_task_status_type`
    'pve-task-status-type': _regex_format(r'(?i)ok|error|warning|unknown', 'invalid status'),
    'pve-storage-id': _storage_id,
    'storage-pair': _storage_pair,
    # pve-access-control src/PVE/Auth/Plugin.pm `pve_verify_realm`
    'pve-realm': _regex_format(r'[A-Za-z][A-Za-z0-9.\-_]+', 'value does not look like a valid realm'),
}


def _check_format_of(prop, value):
    fmt = prop.get('format')
    if not isinstance(fmt, str):
        return None   # property-string formats (a nested schema) are not checked
    # JSONSchema.pm `check_format`: 'name-list' checks every list entry, 'name-opt' a
    # non-empty value; the entry check is the one registered for 'name'.
    name, kind = re.fullmatch(r'(.*?)(?:-(list|opt))?', fmt).groups()
    check = FORMATS.get(name)
    if check is None or (kind == 'opt' and value in ('', '0')):
        return None
    for item in (_split_list(value) if kind == 'list' else [value]):
        problem = check(item)
        if problem:
            return 'invalid format - %s' % problem
    return None


def _split_list(text):
    # pve-common src/PVE/ParseUtils.pm `split_list`: NUL-separated if there is a NUL,
    # else separated by commas, semicolons and white space.
    if '\0' in text:
        return [item for item in text.split('\0') if item]
    return re.sub(r'[,;]', ' ', text).split()


# --------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------
def check_response(schema, method, path, data):
    """Fields in `data` (the response's `data` member) that the schema does not declare,
    and declared scalar fields of the wrong type. Missing fields are not checked."""
    method = method.upper()
    template, _, problem = _locate(schema, method, path)
    if problem:
        return [problem]
    info = schema['endpoints'].get('%s %s' % (method, template))
    if info is None:
        return []
    return ['%s %s: %s' % (method, template, p) for p in _check_data(info.get('returns') or {}, data, '')]


def _check_data(s, value, at, maps=True):
    if value is None:
        return []   # JSONSchema.pm treats an undefined value as absent
    kind = _kind(s)
    if kind == 'string' and isinstance(value, dict) and isinstance(s.get('format'), dict):
        # A property string (its keys are the format) that the endpoint returns parsed, as
        # GET /cluster/options does with crs and migration (shared/PVE-API.md 5.6).
        return _check_object({'properties': s['format']}, value, at, False)
    if not _type_ok_json(kind, value):
        return ["%s: declared %s, got %s %s" % (at or 'data', kind, type(value).__name__,
                                                 json.dumps(value)[:60])]
    if isinstance(value, list) and isinstance(s.get('items'), dict):
        return [p for i, item in enumerate(value) for p in _check_data(s['items'], item, '%s[%d]' % (at, i))]
    if isinstance(value, dict):
        return _check_object(s, value, at, maps)
    return []


def _kind(s):
    if 'type' in s:
        return s['type']
    if 'properties' in s:
        return 'object'
    return 'array' if 'items' in s else None


def _type_ok_json(kind, value):
    if isinstance(kind, list):
        return any(_type_ok_json(k, value) for k in kind)
    is_int = isinstance(value, int) and not isinstance(value, bool)
    checks = {
        'string': lambda: isinstance(value, str),
        'integer': lambda: is_int,
        'number': lambda: is_int or isinstance(value, float),
        # Perl has no booleans: Proxmox answers 0/1 mostly, JSON true/false sometimes.
        'boolean': lambda: isinstance(value, bool) or (is_int and value in (0, 1)),
        'array': lambda: isinstance(value, list),
        'object': lambda: isinstance(value, dict),
    }
    return checks.get(kind, lambda: True)()


def _check_object(s, value, at, maps):
    props = s.get('properties') or {}
    extra = s.get('additionalProperties')
    if not props and not isinstance(extra, dict):
        return []   # a bare object: nothing declared, nothing to check
    if maps and _is_map(props, value):
        # e.g. not_allowed_nodes: the schema gives the properties of each entry, the data
        # is {node: entry}; an entry is an object, not a further map.
        return [p for key, entry in sorted(value.items())
                for p in _check_object(s, entry, _join(at, key), False)]
    problems = []
    for key in sorted(value):
        sub = _property(props, key)
        if sub is not None:
            problems += _check_data(sub, value[key], _join(at, key))
        elif isinstance(extra, dict):
            problems += _check_data(extra, value[key], _join(at, key))
        elif not extra:
            problems.append('%s: not declared' % _join(at, key))
    return problems


def _is_map(props, value):
    return bool(value) and all(_property(props, k) is None and isinstance(v, dict) for k, v in value.items())


def _property(props, key):
    """The schema of `key`; indexed keys (net0, scsi1) are declared once as net[n], scsi[n]."""
    if key in props:
        return props[key]
    indexed = re.fullmatch(r'(.+?)\d+', key)
    return props.get(indexed.group(1) + '[n]') if indexed else None


def _join(at, key):
    return '%s.%s' % (at, key) if at else key
