# Nodes of the local lab: one Docker container per node (systemd as PID 1, sshd), each in
# its own network namespace wired to the host by a veth pair (no bridge, no NAT), created
# and removed by scripts/lab-node.sh from terraform_data provisioners.
#
# Addressing (network_base "10.213"): environment E (env_index, from 0) owns
# 10.213.(E+1).0/24; its node N (from 0, at most 60 nodes) owns 10.213.(E+1).(4N)/30 with
# the host side of the veth at .(4N+1) and the node at .(4N+2). 10.213.0.0/24 is the
# host's own (mirror_address, 10.213.0.1, routed into every node as a /32 via its veth).

locals {
  repo_root    = coalesce(var.repo_root, abspath("${path.module}/../../.."))
  subnet_octet = var.env_index + 1
  nodes = {
    for i in range(var.node_count) : format("%s-%s-%d", var.project, var.environment, i + 1) => {
      index        = i
      host_address = format("%s.%d.%d", var.network_base, local.subnet_octet, 4 * i + 1)
      node_address = format("%s.%d.%d", var.network_base, local.subnet_octet, 4 * i + 2)
    }
  }
}

resource "terraform_data" "node" {
  for_each = local.nodes

  triggers_replace = {
    name              = each.key
    image             = var.image
    stack_fingerprint = var.stack_fingerprint
    node_address      = each.value.node_address
    host_address      = each.value.host_address
    mirror_address    = var.mirror_address
    ssh_key_sha256    = sha256(trimspace(var.ssh_public_key))
  }

  # Everything the provisioners need: destroy-time provisioners may only read self.
  input = {
    name         = each.key
    image        = var.image
    node_address = each.value.node_address
    host_address = each.value.host_address
    mirror       = var.mirror_address
    environment  = var.environment
    project      = var.project
    stack_name   = var.stack_name
    fingerprint  = var.stack_fingerprint
    script       = "${local.repo_root}/scripts/lab-node.sh"
  }

  provisioner "local-exec" {
    interpreter = ["/bin/bash", "-c"]
    command     = <<-EOT
      exec "$SL_SCRIPT" create "$SL_NAME" "$SL_IMAGE" "$SL_NODE" "$SL_HOST" "$SL_MIRROR" "$SL_PUBKEY" \
        "stacklock.project=$SL_PROJECT" "stacklock.environment=$SL_ENV" \
        "stacklock.stack=$SL_STACK" "stacklock.fingerprint=$SL_FP" "stacklock.node=$SL_NAME"
    EOT
    environment = {
      SL_SCRIPT  = self.input.script
      SL_NAME    = self.input.name
      SL_IMAGE   = self.input.image
      SL_NODE    = self.input.node_address
      SL_HOST    = self.input.host_address
      SL_MIRROR  = self.input.mirror
      SL_PUBKEY  = trimspace(var.ssh_public_key)
      SL_PROJECT = self.input.project
      SL_ENV     = self.input.environment
      SL_STACK   = self.input.stack_name
      SL_FP      = self.input.fingerprint
    }
  }

  provisioner "local-exec" {
    when        = destroy
    interpreter = ["/bin/bash", "-c"]
    command     = "exec \"$SL_SCRIPT\" destroy \"$SL_NAME\" \"$SL_NODE\""
    environment = {
      SL_SCRIPT = self.input.script
      SL_NAME   = self.input.name
      SL_NODE   = self.input.node_address
    }
  }
}
