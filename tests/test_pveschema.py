"""pveschema: recorded requests and responses checked against Proxmox's own API schema.

The schemas live outside the repository (../shared/pve-schema, beside it in CI); where they
are absent, as in a Debian package build, these tests skip themselves."""

import json
import os
import re

import pytest

import pveschema

pytestmark = pytest.mark.skipif(not os.path.isdir(pveschema.SCHEMA_DIR),
                                reason='no Proxmox schema extracts at %s' % pveschema.SCHEMA_DIR)

MIGRATE = '/nodes/pve1/qemu/101/migrate'
PRECONDITION = {"running": 1, "allowed_nodes": ["b"],
                "not_allowed_nodes": {"b": {}, "c": {"unavailable_storages": ["x"]}},
                "local_disks": [], "local_resources": [], "mapped-resources": [],
                "mapped-resource-info": {}, "has-dbus-vmstate": 1}


def request(method='POST', url=MIGRATE, auth='token', csrf=False, **params):
    return {'method': method, 'path': url, 'params': params, 'auth': auth, 'csrf': csrf}


def migrate(**params):
    params = params or {'target': 'pve2', 'online': '1', 'with-local-disks': '1'}
    return request(**params)


def problems(version, rec):
    return pveschema.check_request(pveschema.load(version), rec)


def one_problem(found, *words):
    """Exactly one problem, and it names every word."""
    assert len(found) == 1, found
    for word in words:
        assert word in found[0], found
    return found[0]


# ------------------------------------------------------------------------- loading

def test_versions_are_the_five_extracts():
    assert pveschema.versions() == ['8.0', '8.4', '9.0', '9.1', '9.2']
    for version in pveschema.versions():
        schema = pveschema.load(version)
        assert schema['paths']['/nodes/{node}/qemu/{vmid}/migrate'] == ['GET', 'POST'], version
        assert pveschema.load(version) is schema, 'load() caches'


def test_unknown_version_is_refused():
    with pytest.raises(ValueError):
        pveschema.load('7.4')


@pytest.mark.parametrize('version', ['8.0', '8.4', '9.0', '9.1', '9.2'])
def test_supplementary_endpoints_are_merged(version):
    schema = pveschema.load(version)
    for key in ['GET /cluster/replication', 'GET /access/permissions', 'GET /nodes/{node}/lxc/{vmid}/config']:
        method, template = key.split(' ', 1)
        assert pveschema.described(schema, method, template), key
    meta = schema['meta']['extra']
    assert meta['repo'] == 'proxmox/pve-docs' and meta['file'] == 'api-viewer/apidata.js'
    assert re.fullmatch('[0-9a-f]{40}', meta['commit'])
    if version != '9.2':   # the README's commit for that version
        assert meta['commit'] == schema['meta']['commit']


def test_supplementary_files_keep_only_short_descriptions():
    def descriptions(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == 'description' and isinstance(value, str):
                    yield value
                else:
                    yield from descriptions(value)
        elif isinstance(node, list):
            for value in node:
                yield from descriptions(value)
    for version in pveschema.versions():
        with open(os.path.join(pveschema.EXTRA_DIR, version + '.json'), encoding='utf-8') as handle:
            extra = json.load(handle)
        assert extra['endpoints'], version
        assert max(len(d) for d in descriptions(extra['endpoints'])) <= 200


def test_ha_rules_and_lxc_precondition_exist_only_in_9():
    for version in ('8.0', '8.4'):
        one_problem(problems(version, request('GET', '/cluster/ha/rules')), 'unknown path')
        one_problem(problems(version, request('GET', '/nodes/pve1/lxc/200/migrate', target='pve2')),
                    'method not allowed')
    for version in ('9.0', '9.1', '9.2'):
        assert problems(version, request('GET', '/cluster/ha/rules', type='node-affinity')) == []
        assert problems(version, request('GET', '/nodes/pve1/lxc/200/migrate', target='pve2')) == []


# ------------------------------------------------------------------------- paths

def test_match_path_binds_the_parameters():
    schema = pveschema.load('9.0')
    assert pveschema.match_path(schema, MIGRATE) == ('/nodes/{node}/qemu/{vmid}/migrate',
                                                     {'node': 'pve1', 'vmid': '101'})
    assert pveschema.match_path(schema, '/nodes/pve1/qemu/') == ('/nodes/{node}/qemu', {'node': 'pve1'})
    assert pveschema.match_path(schema, '/nodes/pve1/qemu/101/migrate/now') is None


def test_match_path_prefers_literal_segments():
    schema = {'paths': {'/a/{x}/{y}': ['GET'], '/a/{x}/c': ['GET'], '/a/b/{y}': ['GET']}, 'endpoints': {}}
    assert pveschema.match_path(schema, '/a/z/q') == ('/a/{x}/{y}', {'x': 'z', 'y': 'q'})
    assert pveschema.match_path(schema, '/a/z/c') == ('/a/{x}/c', {'x': 'z'})
    # two literals each: the one whose literal comes first wins
    assert pveschema.match_path(schema, '/a/b/c') == ('/a/b/{y}', {'y': 'c'})


def test_unknown_path_and_method():
    one_problem(problems('9.0', request('GET', '/nodes/pve1/qemu/101/teleport')), 'unknown path')
    one_problem(problems('9.0', request('DELETE', MIGRATE)), 'method not allowed')
    one_problem(pveschema.check_response(pveschema.load('9.0'), 'GET', '/no/such/path', {}), 'unknown path')


# ------------------------------------------------------------------------- parameters

@pytest.mark.parametrize('version', ['8.0', '8.4', '9.0', '9.1', '9.2'])
def test_valid_migration(version):
    assert problems(version, migrate()) == []
    assert problems(version, migrate(target='pve2', online='0', bwlimit='0', targetstorage='local-lvm')) == []


@pytest.mark.parametrize('value', ['True', 'true', 'yes', '', '2'])
def test_boolean_only_as_0_or_1(value):
    one_problem(problems('9.0', migrate(target='pve2', online=value)),
                "'online'", "type check ('boolean') failed - got '%s'" % value)


def test_undeclared_parameter():
    one_problem(problems('9.0', migrate(target='pve2', online='1', live='1')), "undeclared parameter 'live'")


def test_conntrack_state_is_new_in_9():
    rec = migrate(target='pve2', online='1', **{'with-conntrack-state': '1'})
    assert problems('9.0', rec) == []
    one_problem(problems('8.4', rec), "undeclared parameter 'with-conntrack-state'")


def test_missing_target():
    one_problem(problems('9.0', migrate(online='1')), "missing parameter 'target'")


def test_path_parameters_are_checked_and_may_not_be_repeated():
    one_problem(problems('9.0', request(url='/nodes/pve1/qemu/abc/migrate', target='pve2')),
                "'vmid'", "type check ('integer')")
    one_problem(problems('9.0', request(url='/nodes/pve1/qemu/99/migrate', target='pve2')),
                "'vmid'", 'valid VM ID')
    one_problem(problems('9.0', request(url='/nodes/pve_1/qemu/101/migrate', target='pve2')),
                "'node'", 'node name')
    one_problem(problems('9.0', migrate(target='pve2', vmid='101')), "'vmid' repeats the path's")


def test_formats_ranges_enums_patterns():
    one_problem(problems('9.0', migrate(target='pve 2')), "'target'", 'node name')
    one_problem(problems('9.0', migrate(target='pve2', bwlimit='-1')), "'bwlimit'", 'minimum')
    one_problem(problems('9.0', migrate(target='pve2', migration_type='fast')), "'migration_type'", 'fast')
    assert problems('9.0', migrate(target='pve2', targetstorage='local:ceph, nfs:ceph')) == []
    one_problem(problems('9.0', migrate(target='pve2', targetstorage='local:ceph,x')),
                "'targetstorage'", "storage ID 'x'")
    one_problem(problems('9.0', migrate(target='pve2', targetstorage='local:ceph_')),
                "'targetstorage'", "storage ID 'ceph_'")
    tasks = '/nodes/pve1/tasks'
    assert problems('9.0', request('GET', tasks, statusfilter='ok,error', vmid='101', limit='50')) == []
    one_problem(problems('9.0', request('GET', tasks, statusfilter='ok,fine')), "'statusfilter'")
    permissions = '/access/permissions'
    assert problems('9.0', request('GET', permissions, userid='prs@pve!rebalancer')) == []
    one_problem(problems('9.0', request('GET', permissions, userid='prs')), "'userid'", 'regex pattern')
    one_problem(problems('9.0', request('GET', '/cluster/resources', type='vms')), "'type'", 'vms')


# ------------------------------------------------------------------------- authentication

def ticket_request(auth='none', **params):
    params = params or {'username': 'prs@pve', 'password': '***'}
    return request('POST', '/access/ticket', auth=auth, **params)


def test_ticket_request_needs_no_authentication_and_no_csrf():
    assert problems('9.0', ticket_request()) == []
    assert problems('9.0', ticket_request(auth='ticket')) == []   # renewal: password is the ticket
    one_problem(problems('9.0', ticket_request(username='prs@pve')), "missing parameter 'password'")
    one_problem(problems('9.0', ticket_request(username='prs@pve', password='***', path='/')),
                "'path' requires 'privs'")


def test_missing_csrf_token_on_a_ticket_write():
    one_problem(problems('9.0', dict(migrate(), auth='ticket')), 'CSRFPreventionToken')
    assert problems('9.0', dict(migrate(), auth='ticket', csrf=True)) == []
    assert problems('9.0', dict(migrate(), auth='token')) == []
    assert problems('9.0', request('GET', MIGRATE, auth='ticket')) == []
    # pveproxy checks CSRF before it looks at the endpoint: undescribed ones too
    one_problem(problems('9.0', request('POST', '/nodes/pve1/qemu/101/snapshot', auth='ticket')),
                'CSRFPreventionToken')


def test_token_on_an_endpoint_that_refuses_tokens():
    one_problem(problems('9.0', ticket_request(auth='token')), 'allowtoken')


def test_authentication_needed():
    one_problem(problems('9.0', request('GET', '/cluster/resources', auth='none')), 'needs authentication')
    one_problem(problems('9.0', dict(migrate(), auth='none')), 'needs authentication')


def test_undescribed_endpoint_gets_path_and_method_only():
    schema = pveschema.load('9.0')
    assert not pveschema.described(schema, 'GET', '/nodes/{node}/qemu/{vmid}/snapshot')
    assert pveschema.described(schema, 'post', '/nodes/{node}/qemu/{vmid}/migrate')
    rec = request('GET', '/nodes/pve1/qemu/101/snapshot', auth='none', anything='True')
    assert pveschema.check_request(schema, rec) == []


# ------------------------------------------------------------------------- responses

def response(version, path, data, method='GET'):
    return pveschema.check_response(pveschema.load(version), method, path, data)


@pytest.mark.parametrize('version,undeclared', [
    ('8.0', {'has-dbus-vmstate', 'mapped-resource-info'}),
    ('8.4', {'has-dbus-vmstate'}),
    ('9.0', set()), ('9.1', set()), ('9.2', set())])
def test_real_precondition_shape(version, undeclared):
    found = response(version, MIGRATE, PRECONDITION)
    assert {re.search(r': (\S+): not declared$', p).group(1) for p in found} == undeclared, found


def test_undeclared_response_field():
    one_problem(response('9.0', MIGRATE, dict(PRECONDITION, migratable=1)), 'migratable: not declared')


def test_map_of_nodes_is_checked_entry_by_entry():
    not_allowed = {'c': {'unavailable_storages': ['x'], 'unavailable-resources': ['usb0']}}
    one_problem(response('9.0', MIGRATE, dict(PRECONDITION, not_allowed_nodes=not_allowed)),
                'not_allowed_nodes.c.unavailable-resources: not declared')
    wrong_type = {'c': {'unavailable_storages': 'x'}}
    one_problem(response('9.0', MIGRATE, dict(PRECONDITION, not_allowed_nodes=wrong_type)),
                'not_allowed_nodes.c.unavailable_storages: declared array')
    # an entry is an object with those properties, not a map again
    one_problem(response('9.0', MIGRATE, dict(PRECONDITION, not_allowed_nodes={'c': {'d': {}}})),
                'not_allowed_nodes.c.d: not declared')


def test_array_items_and_scalar_types():
    disk = {'volid': 'local:101/vm-101-disk-0.qcow2', 'size': 1024, 'cdrom': 0, 'is_unused': False}
    assert response('9.0', MIGRATE, dict(PRECONDITION, local_disks=[disk])) == []
    found = response('9.0', MIGRATE, dict(PRECONDITION, running='yes',
                                          local_disks=[disk, dict(disk, size='1024', drivename='scsi0')]))
    assert len(found) == 3, found
    assert any('running: declared boolean, got str' in p for p in found)
    assert any('local_disks[1].size: declared integer, got str' in p for p in found)
    assert any('local_disks[1].drivename: not declared' in p for p in found)
    one_problem(response('9.0', MIGRATE, dict(PRECONDITION, running=2)), 'running: declared boolean')
    node = {'id': 'node/pve1', 'type': 'node', 'node': 'pve1', 'maxmem': 1024, 'cpu': 0.5}
    assert response('9.0', '/cluster/resources', [node, dict(node, cpu=1)]) == []
    one_problem(response('9.0', '/cluster/resources', [node, dict(node, maxmem=True)]),
                '[1].maxmem: declared integer')
    one_problem(response('9.0', '/cluster/resources', {'data': [node]}), 'declared array, got dict')


def test_indexed_config_keys():
    # Proxmox declares numbered keys once, as net[n] (qemu and lxc config); a made-up schema
    # since PRS calls no endpoint whose full config answer is kept in pveschema-extra.
    schema = {'paths': {'/x': ['GET']}, 'endpoints': {'GET /x': {'returns': {'type': 'object', 'properties': {
        'name': {'type': 'string'}, 'net[n]': {'type': 'string'}, 'scsi[n]': {'type': 'string'}}}}}}
    config = {'name': 'db1', 'net0': 'virtio=BC:24:11:00:00:01,bridge=vmbr0', 'scsi12': 'local:vm-101-disk-0'}
    assert pveschema.check_response(schema, 'GET', '/x', config) == []
    one_problem(pveschema.check_response(schema, 'GET', '/x', dict(config, warp0='1')), 'warp0: not declared')


def test_bare_objects_and_undescribed_endpoints_are_not_checked():
    assert response('9.0', '/cluster/options', {'anything': {'goes': 1}}) == []
    assert response('9.0', '/nodes/pve1/qemu/101/snapshot', [{'anything': 'x'}]) == []


def test_parsed_property_string():
    crs = {'ha': 'static', 'ha-rebalance-on-start': 1}
    assert response('9.2', '/cluster/options', {'crs': crs, 'bwlimit': 'migration=512000'}) == []
    one_problem(response('9.2', '/cluster/options', {'crs': dict(crs, speed='max')}),
                'crs.speed: not declared')
    one_problem(response('9.2', '/cluster/options', {'max_workers': '4'}), 'max_workers: declared integer')


def test_additional_properties_allow_undeclared_fields():
    status = {'cpu': 0.1, 'pveversion': 'pve-manager/9.0.3', 'ksm': {'shared': 0},
              'cpuinfo': {'cpus': 8, 'model': 'EPYC'}}
    assert response('9.0', '/nodes/pve1/status', status) == []
    assert response('8.0', '/nodes/pve1/status', status) == []   # 8.0: a bare object
    # the nested cpuinfo declares no additionalProperties, unlike the top level
    one_problem(response('9.0', '/nodes/pve1/status', dict(status, cpuinfo={'cpus': 8, 'mhz': '2000'})),
                'cpuinfo.mhz: not declared')
