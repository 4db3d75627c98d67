# Existing (on-prem / bare-metal) GPU nodes: Terraform does not create them, it records
# them. Each host is one terraform_data whose triggers carry the stack fingerprint and the
# host's SSH coordinates, so a changed stack or a moved host shows up in `terraform plan`
# as a replacement of that host's record.

locals {
  hosts_by_name = { for h in var.hosts : h.name => h }
}

resource "terraform_data" "host" {
  for_each = local.hosts_by_name

  triggers_replace = {
    stack_fingerprint = var.stack_fingerprint
    address           = each.value.address
    user              = each.value.user
    port              = each.value.port
  }

  input = {
    name        = each.key
    address     = each.value.address
    user        = each.value.user
    port        = each.value.port
    environment = var.environment
    project     = var.project
    stack_name  = var.stack_name
    fingerprint = var.stack_fingerprint
  }
}
