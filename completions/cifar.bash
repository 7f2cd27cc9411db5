
_cifar_completion() {
    local IFS=$'
'
    COMPREPLY=( $( env COMP_WORDS="${COMP_WORDS[*]}" \
                   COMP_CWORD=$COMP_CWORD \
                   _CIFAR_COMPLETE=complete_bash $1 ) )
    return 0
}

complete -o default -F _cifar_completion cifar

