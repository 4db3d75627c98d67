output "hosts" {
  description = "The environment's nodes: name => {address, user, port, container, environment, fingerprint}; the inventory is written from this."
  value = {
    for name, node in terraform_data.node : name => {
      address     = node.output.node_address
      user        = "root"
      port        = 22
      container   = node.output.name
      environment = node.output.environment
      fingerprint = node.output.fingerprint
    }
  }
}
